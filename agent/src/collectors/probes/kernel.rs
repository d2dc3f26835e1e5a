//! What the probes learn from the running kernel before they load: tracefs (mounted when
//! missing), tracepoint record layouts, and struct member offsets from BTF.

use std::{
    collections::HashMap,
    ffi::CString,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use btf_rs::{Btf, Type};

/// Where the running kernel's BTF lives.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Something the probes needed to know about the kernel and could not find out.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("tracefs is not mounted and mounting it at {path} failed: {source}")]
    Tracefs {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint {0} does not exist on this kernel")]
    NoTracepoint(String),
    #[error("tracepoint {tracepoint} has no field `{field}`")]
    NoField { tracepoint: String, field: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel BTF ({VMLINUX_BTF}): {0}")]
    Btf(String),
    #[error("kernel BTF has no member `{member}` in struct {strukt}")]
    NoMember { strukt: String, member: String },
}

/// The tracefs root, mounting tracefs at `/sys/kernel/tracing` when no mount is found.
pub fn tracefs() -> Result<PathBuf, KernelError> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Ok(PathBuf::from(p));
        }
    }
    let target = "/sys/kernel/tracing";
    let c = |s: &str| CString::new(s).expect("no NUL in constant");
    let (src, dst, fstype) = (c("tracefs"), c(target), c("tracefs"));
    // SAFETY: all pointers are valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(KernelError::Tracefs {
            path: target.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    tracing::info!(path = target, "mounted tracefs");
    Ok(PathBuf::from(target))
}

/// Field offsets of one tracepoint's record, read from its tracefs `format` file.
#[derive(Debug, Clone)]
pub struct TracepointFormat {
    name: String,
    fields: HashMap<String, u32>,
}

impl TracepointFormat {
    /// Reads `events/<category>/<name>/format`.
    pub fn read(category: &str, name: &str) -> Result<Self, KernelError> {
        let path = tracefs()?
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let full = format!("{category}:{name}");
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                KernelError::NoTracepoint(full.clone())
            } else {
                KernelError::Read {
                    path: path.display().to_string(),
                    source,
                }
            }
        })?;
        Ok(Self::parse(&full, &text))
    }

    /// Parses the text of a `format` file.
    pub fn parse(name: &str, text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| {
                let line = line.trim().strip_prefix("field:")?;
                let mut parts = line.split(';').map(str::trim);
                let decl = parts.next()?;
                let offset = parts
                    .find_map(|p| p.strip_prefix("offset:"))?
                    .parse()
                    .ok()?;
                // `const void * skbaddr`, `__u8 saddr[4]`: the name is the last word, sans array.
                let field = decl.rsplit([' ', '*']).next()?.split('[').next()?;
                Some((field.to_string(), offset))
            })
            .collect();
        Self {
            name: name.to_string(),
            fields,
        }
    }

    /// Byte offset of `field` in the record.
    pub fn offset(&self, field: &str) -> Result<u32, KernelError> {
        self.fields
            .get(field)
            .copied()
            .ok_or_else(|| KernelError::NoField {
                tracepoint: self.name.clone(),
                field: field.to_string(),
            })
    }
}

/// The running kernel's BTF, parsed once and kept until [`release_btf`].
static BTF: Mutex<Option<Arc<Btf>>> = Mutex::new(None);

/// The running kernel's BTF, parsed on first use.
pub fn btf() -> Result<Arc<Btf>, KernelError> {
    let mut cached = BTF.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(btf) = cached.as_ref() {
        return Ok(Arc::clone(btf));
    }
    let btf = Arc::new(Btf::from_file(VMLINUX_BTF).map_err(|e| KernelError::Btf(e.to_string()))?);
    *cached = Some(Arc::clone(&btf));
    Ok(btf)
}

/// Drops the parsed BTF (tens of MiB of heap) once every probe has its offsets, and hands
/// the freed heap back to the kernel so the agent's resident size reflects what it uses.
pub fn release_btf() {
    BTF.lock().unwrap_or_else(|e| e.into_inner()).take();
    // SAFETY: malloc_trim only walks glibc's own free lists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Byte offset of `member` in `struct strukt`, looking through anonymous structs and unions.
pub fn member_offset(strukt: &str, member: &str) -> Result<u32, KernelError> {
    let btf = btf()?;
    let btf = btf.as_ref();
    let missing = || KernelError::NoMember {
        strukt: strukt.to_string(),
        member: member.to_string(),
    };
    let types = btf.resolve_types_by_name(strukt).map_err(|_| missing())?;
    types
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) => find_member(btf, s, member),
            _ => None,
        })
        .ok_or_else(missing)
}

/// The kernel BTF id of `struct name`, if the kernel's BTF has it.
pub fn struct_id(name: &str) -> Option<u32> {
    let btf = btf().ok()?;
    let ids = btf.resolve_ids_by_name(name).ok()?;
    ids.into_iter()
        .find(|&id| matches!(btf.resolve_type_by_id(id), Ok(Type::Struct(_))))
}

/// The kernel BTF id of the function `name` (a kfunc), if the kernel's BTF has it.
pub fn func_id(name: &str) -> Option<u32> {
    let btf = btf().ok()?;
    let ids = btf.resolve_ids_by_name(name).ok()?;
    ids.into_iter()
        .find(|&id| matches!(btf.resolve_type_by_id(id), Ok(Type::Func(_))))
}

/// The kernel BTF id of a struct whose member at byte 0 is a `struct file *` (`kiocb`
/// everywhere since 2.6), for casting an fd array's slot to it.
pub fn file_slot_struct_id() -> Option<u32> {
    let btf = btf().ok()?;
    let id = struct_id("kiocb")?;
    let Ok(Type::Struct(s)) = btf.resolve_type_by_id(id) else {
        return None;
    };
    let first = s.members.first()?;
    if first.bit_offset() != 0 || btf.resolve_name(first).ok()? != "ki_filp" {
        return None;
    }
    // The member must be a pointer to `struct file`.
    let Ok(Type::Ptr(ptr)) = btf.resolve_chained_type(first) else {
        return None;
    };
    match btf.resolve_chained_type(&ptr) {
        Ok(Type::Struct(f)) if btf.resolve_name(&f).ok()? == "file" => Some(id),
        _ => None,
    }
}

fn find_member(btf: &Btf, s: &btf_rs::Struct, member: &str) -> Option<u32> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            return Some(m.bit_offset() / 8);
        }
        if name.is_empty() {
            let inner = match btf.resolve_chained_type(m).ok()? {
                Type::Struct(inner) | Type::Union(inner) => inner,
                _ => continue,
            };
            if let Some(off) = find_member(btf, &inner, member) {
                return Some(m.bit_offset() / 8 + off);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: tcp_retransmit_skb\nID: 2281\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;\n\tfield:int err;\toffset:76;\tsize:4;\tsigned:1;\n\nprint fmt: \"x\"\n";

    #[test]
    fn parses_tracepoint_format() {
        let f = TracepointFormat::parse("tcp:tcp_retransmit_skb", FORMAT);
        assert_eq!(f.offset("common_type").unwrap(), 0);
        assert_eq!(f.offset("skbaddr").unwrap(), 8);
        assert_eq!(f.offset("sport").unwrap(), 28);
        assert_eq!(f.offset("saddr").unwrap(), 34);
        assert_eq!(f.offset("err").unwrap(), 76);
        let e = f.offset("nope").unwrap_err().to_string();
        assert_eq!(e, "tracepoint tcp:tcp_retransmit_skb has no field `nope`");
    }
}
