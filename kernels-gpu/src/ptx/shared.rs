//! Static shared arrays on the GPU: one module-scope `.shared .align 16 .b8 NAME[BYTES]` per
//! [`SharedArray`] marker the kernels use, declared here from the marker type itself.
//!
//! PTX needs the symbol name in the source text, and a generic method cannot emit it, so the markers
//! are listed once below. `Ptx::static_shared::<S>()` looks `S::NAME` up at compile time: a marker
//! missing from the list is a compile error of the PTX build ("static shared array not declared"),
//! never a wrong address.

use crate::simt::SharedArray;

macro_rules! static_shared_arrays {
    ($($sym:ident => $marker:ty),* $(,)?) => {
        $(
            core::arch::global_asm!(
                concat!(".shared .align 16 .b8 ", stringify!($sym), "[{bytes}];"),
                bytes = const <$marker as SharedArray>::LEN * core::mem::size_of::<<$marker as SharedArray>::Elem>(),
            );
            const _: () = assert!(
                str_eq(<$marker as SharedArray>::NAME, stringify!($sym)),
                concat!("SharedArray::NAME of ", stringify!($marker), " must be ", stringify!($sym)),
            );
        )*

        /// (symbol, bytes) of every declared array, in [`ADDRESS`] order.
        const ARRAYS: &[(&str, usize)] = &[$((
            stringify!($sym),
            <$marker as SharedArray>::LEN * core::mem::size_of::<<$marker as SharedArray>::Elem>(),
        )),*];

        /// Generic address of each declared array (`cvta.shared.u64`).
        pub(super) const ADDRESS: &[fn() -> *mut u8] = &[$({
            #[inline(always)]
            fn address() -> *mut u8 {
                let p: u64;
                // SAFETY: address of a declared .shared symbol.
                unsafe {
                    core::arch::asm!(
                        concat!("cvta.shared.u64 {p}, ", stringify!($sym), ";"),
                        p = out(reg64) p,
                        options(pure, nomem, nostack),
                    )
                };
                p as *mut u8
            }
            address
        }),*];
    };
}

// Every SharedArray marker of src/kernels/, as `NAME => type`.
static_shared_arrays! {
    medmoe_reduce_scratch => crate::kernels::reduce::ReduceScratch,
    medmoe_ce_scratch => crate::kernels::cross_entropy::CeScratch,
    medmoe_kl_scratch => crate::kernels::distill::KlScratch,
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Index into [`ADDRESS`] of the array named `name` of `bytes` bytes (evaluated at compile time).
pub(super) const fn index_of(name: &str, bytes: usize) -> usize {
    let mut i = 0;
    while i < ARRAYS.len() {
        if str_eq(ARRAYS[i].0, name) {
            assert!(ARRAYS[i].1 == bytes, "static shared array size differs from its declaration");
            return i;
        }
        i += 1;
    }
    panic!("static shared array not declared: add its marker to kernels-gpu/src/ptx/shared.rs")
}
