//! `extern "ptx-kernel"` entry points: one per row of `table.rs` (every kernel of [`crate::kernels`]),
//! each a thin shim that calls the kernel body with the [`Ptx`] context. Parameters are passed as the
//! kernel takes them (`Gmem<T>` is a pointer, `usize` / `f32` scalars, `#[repr(C)]` structs by value).

use super::Ptx;
use crate::simt::Gmem;

macro_rules! define_entries {
    ($($variant:ident $launcher:ident $sym:ident = $kernel:path => ($($arg:ident : $ty:ty),* $(,)?);)*) => {$(
        #[no_mangle]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $sym($($arg: $ty),*) {
            $kernel(&Ptx, $($arg),*)
        }
    )*};
}

include!("table.rs");
for_each_kernel!(define_entries);
