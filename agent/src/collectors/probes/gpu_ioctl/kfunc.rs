//! The kfunc the cheapest entry program calls (`bpf_rdonly_cast`): its call instruction is
//! built with a placeholder, and the object is patched with this kernel's BTF id before load.

use nodewatch_common::gpu_ioctl::RDONLY_CAST_INSN;

/// An object's bytes, 8-byte aligned as the loader's ELF parser wants them.
pub(super) struct Object(Vec<u64>);

impl Object {
    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: a u64 slice viewed as its bytes; same length in bytes, alignment 1.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.0.len() * 8) }
    }
}

/// `object` with every `bpf_rdonly_cast` placeholder call pointing at the kfunc's BTF id
/// `id`; None when the object holds none (nothing to patch: a build without the program).
pub(super) fn with_kfunc(object: &[u8], id: u32) -> Option<Object> {
    let mut words = vec![0u64; object.len().div_ceil(8)];
    // SAFETY: as in `Object::bytes`, mutable; the vector holds at least object.len() bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) };
    bytes[..object.len()].copy_from_slice(object);
    let insn = RDONLY_CAST_INSN.to_le_bytes();
    let mut found = 0;
    // Instructions are 8-byte aligned inside their section, and sections are aligned in
    // the file; a match elsewhere (data that happens to equal it) would be at the same
    // alignment only by chance, and the placeholder was chosen not to be a plausible value.
    for at in (0..object.len().saturating_sub(7)).step_by(8) {
        if bytes[at..at + 8] == insn {
            bytes[at + 4..at + 8].copy_from_slice(&id.to_le_bytes());
            found += 1;
        }
    }
    (found > 0).then_some(Object(words))
}
