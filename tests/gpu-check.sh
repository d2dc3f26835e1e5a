#!/usr/bin/env bash
# nodewatch on a real NVIDIA GPU machine (H100/H200, HGX or PCIe): every series of the GPU
# fabric and Xid collectors compared with what nvidia-smi says about the same GPUs.
#
#   persistence mode, PCIe link width and generation (now and max)  <->  nvidia-smi --query-gpu
#   NVLink state per link                                             <->  nvidia-smi nvlink -s
#   NVLink replay / recovery / CRC error counters                     <->  nvidia-smi nvlink -e
#   fabric registration state and health                              <->  nvidia-smi -q (Fabric)
#   needs reset                                                       <->  nvidia-smi --query-gpu=reset_status.*
#   PCI bus id -> gpu/uuid of the Xid series                          <->  nvidia-smi --query-gpu=index,uuid,pci.bus_id
#   Xid counts this boot                                              <->  dmesg | grep 'NVRM: Xid'
#   InfiniBand ports                                                  <->  /sys/class/infiniband, ibstat
#
# Run as root from the project root with the release binary built (cargo build --release):
#   bash tests/gpu-check.sh
# It takes about 30 s and leaves the node as it was (the agent runs on its own port with its
# own spool folder). NODEWATCH_CHECK_XID=1 also writes one Xid 13 line (an application error,
# action restart_app) naming GPU 0's bus id into the kernel log and checks that it is counted
# under GPU 0's index and UUID: other monitors on the machine see that line too.
# The report goes to stdout and $OUT/report.txt (a temporary folder when OUT is unset), raw
# files beside it in raw.tgz. Exit status: 0 when every comparison matched, 1 otherwise.
set -u
DEST=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
BIN=${NODEWATCH_BIN:-$PWD/target/release/nodewatch}
PORT=${NODEWATCH_CHECK_PORT:-19478}
exec > >(tee "$DEST/report.txt") 2>&1

section() { printf '\n== %s\n' "$*"; }
scrape() {
  if command -v curl >/dev/null; then curl -fsS "http://127.0.0.1:$PORT/metrics" 2>/dev/null
  else python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$PORT/metrics').read().decode())" 2>/dev/null; fi
}

section machine
uname -r
nvidia-smi -L || { echo "no nvidia-smi: not a GPU machine"; exit 1; }
nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1

section "agent: default config, own port and spool"
cat >"$WORK/config.yaml" <<YAML
listen: 127.0.0.1:$PORT
spool_dir: $WORK/spool
YAML
RUST_LOG=info "$BIN" run --config "$WORK/config.yaml" >"$WORK/agent.log" 2>&1 &
AGENT=$!
trap 'kill $AGENT 2>/dev/null; wait $AGENT 2>/dev/null' EXIT
for _ in $(seq 150); do scrape >/dev/null && break; sleep 0.1; done
sleep 3
"$BIN" probes --config "$WORK/config.yaml" | grep -E 'gpu_state|gpu_xid|infiniband'

if [ "${NODEWATCH_CHECK_XID:-0}" = 1 ]; then
  bus=$(nvidia-smi -i 0 --query-gpu=pci.bus_id --format=csv,noheader | awk -F'[:.]' '{printf "%04x:%s:%s", strtonum("0x" substr($1, length($1)-3)), tolower($2), tolower($3)}')
  echo "<4>NVRM: Xid (PCI:$bus): 13, pid=1, name=nodewatch-gpu-check, Graphics Engine Exception (written by tests/gpu-check.sh)" >/dev/kmsg
  sleep 2
fi

scrape >"$WORK/metrics.txt"
nvidia-smi --query-gpu=index,uuid,pci.bus_id,persistence_mode,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max --format=csv,noheader,nounits >"$WORK/query.csv" 2>&1
nvidia-smi --query-gpu=index,reset_status.reset_required,reset_status.drain_and_reset_recommended --format=csv,noheader >"$WORK/reset.csv" 2>&1 || true
nvidia-smi -q >"$WORK/nvidia-smi-q.txt" 2>&1
nvidia-smi nvlink -s >"$WORK/nvlink-s.txt" 2>&1 || true
nvidia-smi nvlink -e >"$WORK/nvlink-e.txt" 2>&1 || true
dmesg 2>/dev/null | grep -E 'NVRM: Xid|SXid' >"$WORK/dmesg-xid.txt" || true
command -v ibstat >/dev/null && ibstat >"$WORK/ibstat.txt" 2>&1

section "comparison"
python3 - "$WORK" <<'PY'
import collections, glob, os, re, sys
work = sys.argv[1]
read = lambda f: open(os.path.join(work, f), errors="replace").read()
metrics = collections.defaultdict(dict)  # family -> {labels: value}
for line in read("metrics.txt").splitlines():
    m = re.match(r'(nodewatch_\w+)\{(.*)\} (\S+)$', line)
    if m:
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2))))
        metrics[m.group(1)][labels] = float(m.group(3))
def get(family, **want):
    hits = [v for l, v in metrics[family].items() if all((k, str(x)) in l for k, x in want.items())]
    return hits[0] if len(hits) == 1 else None
bad = 0
def check(what, ours, theirs, note=""):
    global bad
    ok = ours is not None and theirs is not None and float(ours) == float(theirs)
    bad += not ok
    print(f"{'MATCH' if ok else 'DIFF '} {what:58} nodewatch={ours} nvidia-smi={theirs} {note}")

gpus = {}
for row in read("query.csv").splitlines():
    f = [x.strip() for x in row.split(",")]
    if len(f) < 8 or not f[0].isdigit():
        print("query:", row); continue
    i, uuid, bus = f[0], f[1], f[2]
    d, b, dv = re.match(r'([0-9A-Fa-f]+):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})', bus).groups()
    gpus[i] = (uuid, f"{int(d, 16):04x}:{b.lower()}:{dv.lower()}")
    check(f"GPU {i} persistence mode", get("nodewatch_gpu_persistence_mode", gpu=i, uuid=uuid), 1 if f[3] == "Enabled" else 0)
    check(f"GPU {i} PCIe width", get("nodewatch_gpu_pcie_link_width", gpu=i), f[6])
    check(f"GPU {i} PCIe width max", get("nodewatch_gpu_pcie_link_width_max", gpu=i), f[7])
    check(f"GPU {i} PCIe generation", get("nodewatch_gpu_pcie_link_generation", gpu=i), f[4], "(may differ: it drops at idle)")
    check(f"GPU {i} PCIe generation max", get("nodewatch_gpu_pcie_link_generation_max", gpu=i), f[5])

for row in read("reset.csv").splitlines():
    f = [x.strip() for x in row.split(",")]
    if len(f) >= 2 and f[0].isdigit() and f[1] in ("Yes", "No"):
        check(f"GPU {f[0]} needs reset", get("nodewatch_gpu_needs_reset", gpu=f[0]), 1 if f[1] == "Yes" else 0)

# nvidia-smi nvlink -s: "GPU 0: NVIDIA H100 ... (UUID: GPU-...)" then "	 Link 0: 26.562 GB/s" or "<inactive>"
gpu = None
for line in read("nvlink-s.txt").splitlines():
    m = re.match(r'GPU (\d+):', line)
    if m:
        gpu = m.group(1); continue
    m = re.match(r'\s+Link (\d+): (.*)', line)
    if m and gpu is not None:
        up = 0 if "inactive" in m.group(2).lower() else 1
        check(f"GPU {gpu} NVLink {m.group(1)} up", get("nodewatch_gpu_nvlink_up", gpu=gpu, link=m.group(1)), up)
links = sum(1 for l in metrics["nodewatch_gpu_nvlink_up"])
print(f"       NVLink series: {links}; lines of nvidia-smi nvlink -s: {read('nvlink-s.txt').count('Link ')}")

# nvidia-smi nvlink -e: "	 Link 0: Replay Errors: 0" ... per GPU
types = {"replay": "replay", "recovery": "recovery", "crc": "crc_flit", "data crc": "crc_data"}
gpu = None
for line in read("nvlink-e.txt").splitlines():
    m = re.match(r'GPU (\d+):', line)
    if m:
        gpu = m.group(1); continue
    m = re.match(r'\s+Link (\d+): (.*)', line)
    if m and gpu is not None:
        for name, value in re.findall(r'([A-Za-z ]+?) Errors: (\d+)', m.group(2)):
            t = types.get(name.strip().lower())
            if t:
                check(f"GPU {gpu} NVLink {m.group(1)} {t} errors",
                      get("nodewatch_gpu_nvlink_errors_total", gpu=gpu, link=m.group(1), type=t), value,
                      "(counts move between the two reads)")

# nvidia-smi -q: per GPU block "GPU 00000000:19:00.0" ... "Fabric" / "State" / "Status"
q = read("nvidia-smi-q.txt")
blocks = re.split(r'\n(?=GPU [0-9A-Fa-f]{8}:)', q)
for b in blocks:
    m = re.match(r'GPU ([0-9A-Fa-f]{8}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})', b)
    if not m:
        continue
    bus = f"{int(m.group(1), 16):04x}:{m.group(2).lower()}:{m.group(3).lower()}"
    idx = next((i for i, (_, p) in gpus.items() if p == bus), None)
    fab = re.search(r'\n\s+Fabric\n((?:\s{8,}.*\n)+)', b)
    if idx is None or not fab:
        continue
    state = re.search(r'State\s+:\s+(.*)', fab.group(1))
    status = re.search(r'Status\s+:\s+(.*)', fab.group(1))
    state = state.group(1).strip() if state else "N/A"
    if state == "N/A":
        check(f"GPU {idx} fabric (not supported)", len([1 for l in metrics["nodewatch_gpu_fabric_healthy"] if ("gpu", idx) in l]), 0)
        continue
    label = {"Completed": "completed", "In Progress": "in_progress", "Not Started": "not_started"}.get(state, state)
    check(f"GPU {idx} fabric state {label}", get("nodewatch_gpu_fabric_state", gpu=idx, state=label), 1)
    healthy = state == "Completed" and status and status.group(1).strip() == "Success"
    print(f"       GPU {idx} fabric block of nvidia-smi -q:\n" + fab.group(1).rstrip())
    check(f"GPU {idx} fabric healthy (state and status; see the health block above)", get("nodewatch_gpu_fabric_healthy", gpu=idx), int(bool(healthy)))

# Xid lines this boot, by bus id and code, against the Xid series and their gpu/uuid.
seen = collections.Counter()
for line in read("dmesg-xid.txt").splitlines():
    m = re.search(r'NVRM: Xid \(PCI:([0-9A-Fa-f]+):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\): (\d+),', line)
    if m:
        seen[(f"{int(m.group(1), 16):04x}:{m.group(2).lower()}:{m.group(3).lower()}", m.group(4))] += 1
for (bus, code), n in sorted(seen.items()):
    rows = [(l, v) for l, v in metrics["nodewatch_gpu_xid_errors_total"].items() if ("pci", bus) in l and ("code", code) in l]
    ours = sum(v for _, v in rows) if rows else None
    check(f"Xid {code} on {bus} this boot", ours, n, "(dmesg may have wrapped)")
    idx = next((i for i, (_, p) in gpus.items() if p == bus), None)
    if idx is not None and rows:
        labels = dict(rows[0][0])
        check(f"Xid {code} on {bus} is GPU {idx}", labels.get("gpu"), idx)
        print(f"       uuid {labels.get('uuid')} (nvidia-smi: {gpus[idx][0]}), action {labels.get('action')}")
if not seen:
    print("       no Xid line in dmesg this boot (NODEWATCH_CHECK_XID=1 writes one)")

# InfiniBand ports in sysfs.
for port in sorted(glob.glob("/sys/class/infiniband/*/ports/*")):
    dev, p = port.split("/")[4], port.split("/")[6]
    st = open(f"{port}/state").read().split(":")[-1].strip()
    ph = open(f"{port}/phys_state").read().split(":")[-1].strip()
    check(f"InfiniBand {dev} port {p} up ({st}, {ph})", get("nodewatch_infiniband_port_up", device=dev, port=p), int(st == "ACTIVE" and ph == "LinkUp"))
    try:
        ld = int(open(f"{port}/counters/link_downed").read())
        check(f"InfiniBand {dev} port {p} link_downed", get("nodewatch_infiniband_link_downed_total", device=dev, port=p), ld)
    except OSError:
        pass
print(f"\n{bad} difference(s)")
sys.exit(1 if bad else 0)
PY
rc=$?

section "agent log: warnings"
grep -E 'WARN|ERROR|Xid' "$WORK/agent.log" | head -20
kill $AGENT 2>/dev/null; wait $AGENT 2>/dev/null
tar -C "$WORK" -czf "$DEST/raw.tgz" . && echo "raw files in $DEST/raw.tgz"
exit $rc
