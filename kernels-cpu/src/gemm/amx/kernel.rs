//! The AMX-BF16 microkernel: a 32x32 f32 block of C over a run of 32-wide k steps, in tile
//! registers. C tiles `tmm0..tmm3` (rows 0-15 x cols 0-15, rows 0-15 x cols 16-31, rows 16-31 x
//! cols 0-15, rows 16-31 x cols 16-31), A tiles `tmm4`, `tmm5` (the two 16-row strips), B tiles
//! `tmm6`, `tmm7` (the two 16-column panels); four `tdpbf16ps` per k step. `tdpbf16ps` adds,
//! for every C element, the two bf16 products of each pair in f32 (the products are exact,
//! the sums round to nearest even; subnormal inputs and outputs are flushed to zero).
//!
//! Tile state: a [`Tiles`] guard loads the configuration (`ldtilecfg`, which costs about as much
//! as a few k steps, so once per task, not per call) and releases the tiles when dropped
//! (`tilerelease`, so the OS saves no tile data at context switches while none is in use). The
//! microkernel takes the guard as proof that the tiles are configured; between the guard's
//! asm blocks and the kernel's, tile registers hold nothing that Rust code could disturb: the
//! compiler never allocates or clobbers them (they are not in any register class it uses), and
//! each kernel call sets every tile it reads (tilezero / tileloadd) before reading it.

/// Tile configuration (palette 1), as `ldtilecfg` reads it: 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    _reserved: [u8; 14],
    /// Bytes per row of tile `t`.
    colsb: [u16; 16],
    /// Rows of tile `t`.
    rows: [u8; 16],
}

/// All eight tiles 16 rows x 64 bytes (16 f32 or 32 bf16 per row).
static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    _reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Configured tiles, released on drop. Create at most one per thread at a time.
pub(super) struct Tiles(());

impl Tiles {
    /// Loads the tile configuration.
    ///
    /// # Safety
    /// AMX-TILE must be available with the XTILEDATA permission granted (`amx::available`).
    pub(super) unsafe fn configure() -> Tiles {
        // SAFETY: AMX available (contract); ldtilecfg reads the 64-byte static config.
        unsafe { std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) &CONFIG, options(nostack, readonly)) };
        Tiles(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: a Tiles value exists only after `configure` succeeded on an AMX CPU; the
        // release returns the tile state to its initial (unconfigured) state.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// `C (+)= A · B` for one 32x32 block: `a0`, `a1` point at the first of `steps` contiguous A
/// tiles of the two row strips, `b0`, `b1` at those of the two column panels (layouts in
/// `pack`); `c` is a row-major f32 block with row stride `c_stride` bytes, read first when
/// `load_c` (else C starts at zero) and written at the end.
///
/// # Safety
/// AMX-BF16 must be available (`amx::available`) and the tiles configured on this thread
/// (`_tiles`); the four tile runs must be readable for `steps * 1024` bytes each;
/// `c` must be readable (when `load_c`) and writable for 32 rows of `c_stride` bytes, the first
/// 128 of each row; `steps >= 1`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) unsafe fn kernel_32x32(
    _tiles: &Tiles,
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    steps: usize,
    c: *mut f32,
    c_stride: usize,
    load_c: bool,
) {
    debug_assert!(steps >= 1);
    // Lower half of C: 16 rows down.
    let c_lo = c.wrapping_byte_add(16 * c_stride);
    // SAFETY: the caller guarantees AMX with configured tiles and the readable/writable ranges:
    // the loop reads `steps` tiles of 1024 bytes from each of a0, a1, b0, b1 (row stride 64),
    // and the C tiles are 16 rows of 64 bytes at c, c+64, c_lo, c_lo+64 with row stride
    // c_stride. Every tile is written (zero / load) before it is read (module docs).
    unsafe {
        std::arch::asm!(
            "test {load:e}, {load:e}",
            "jz 3f",
            "tileloadd tmm0, [{c} + {cs}*1]",
            "tileloadd tmm1, [{c} + {cs}*1 + 64]",
            "tileloadd tmm2, [{clo} + {cs}*1]",
            "tileloadd tmm3, [{clo} + {cs}*1 + 64]",
            "jmp 4f",
            "3:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "4:",
            "2:",
            "tileloadd tmm4, [{a0} + {s64}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s64}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c} + {cs}*1], tmm0",
            "tilestored [{c} + {cs}*1 + 64], tmm1",
            "tilestored [{clo} + {cs}*1], tmm2",
            "tilestored [{clo} + {cs}*1 + 64], tmm3",
            load = in(reg) load_c as u32,
            c = in(reg) c,
            clo = in(reg) c_lo,
            cs = in(reg) c_stride,
            s64 = in(reg) 64usize,
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            steps = inout(reg) steps => _,
            options(nostack),
        );
    }
}
