//! Whether this CPU and OS run AMX-BF16 tiles for this process.

use std::sync::OnceLock;

/// Whether this CPU and OS run AMX-BF16 tiles for this process (asks the kernel for the tile
/// data permission the first time).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // The packing routines are compiled for AVX-512 (every AMX CPU has it; checked anyway).
        let avx512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl");
        avx512 && cpu_has_amx_bf16() && os_enables_tiles() && request_tile_permission()
    })
}

/// CPUID leaf 7, sub-leaf 0, EDX bits 22 (AMX-BF16) and 24 (AMX-TILE).
fn cpu_has_amx_bf16() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is only read when leaf 0 says it exists.
    #[allow(unused_unsafe)]
    let edx = unsafe {
        if __cpuid(0).eax < 7 {
            return false;
        }
        __cpuid_count(7, 0).edx
    };
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// OSXSAVE (CPUID.1:ECX bit 27) and XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA).
fn os_enables_tiles() -> bool {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86-64 CPU.
    #[allow(unused_unsafe)]
    let osxsave = unsafe { __cpuid(1).ecx } & (1 << 27) != 0;
    if !osxsave {
        return false;
    }
    let (lo, _hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 is valid whenever OSXSAVE is set (checked above); it only
    // writes EAX and EDX.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi, options(nomem, nostack, preserves_flags));
    }
    lo & (3 << 17) == 3 << 17
}

/// Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` (process-wide, once).
#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with these arguments only changes the process's
    // permitted xsave features; the syscall instruction clobbers rcx and r11 (declared) and
    // returns in rax.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Other systems: not attempted (the backend reports itself unavailable).
#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}
