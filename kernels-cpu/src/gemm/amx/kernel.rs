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
/// `pack`). C starts from the row-major f32 block `c_in` (pointer, row stride in bytes) or,
/// when it is `None`, from zero, and is written to the block `c_out` (which may be `c_in`).
///
/// # Safety
/// AMX-BF16 must be available (`amx::available`) and the tiles configured on this thread
/// (`_tiles`); the four tile runs must be readable for `steps * 1024` bytes each; `c_in` must
/// be readable and `c_out` writable for 32 rows of their strides, the first 128 bytes of each
/// row; `steps >= 1`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) unsafe fn kernel_32x32(
    _tiles: &Tiles,
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    steps: usize,
    c_in: Option<(*const f32, usize)>,
    c_out: (*mut f32, usize),
) {
    debug_assert!(steps >= 1);
    let (cin, cin_stride) = c_in.unwrap_or((std::ptr::null(), 0));
    let (cout, cout_stride) = c_out;
    // SAFETY: the caller guarantees AMX with configured tiles and the readable/writable ranges:
    // the loop reads `steps` tiles of 1024 bytes from each of a0, a1, b0, b1 (row stride 64);
    // the C tiles are 16 rows of 64 bytes at c, c+64, c+16*stride, c+16*stride+64 (row stride
    // `stride`) of c_in (read only when non-null) and c_out. Every tile is written (zero /
    // load) before it is read (module docs).
    unsafe {
        std::arch::asm!(
            "test {cin}, {cin}",
            "jz 3f",
            "lea {lo}, [{cin} + {cins}*8]",
            "lea {lo}, [{lo} + {cins}*8]",
            "tileloadd tmm0, [{cin} + {cins}*1]",
            "tileloadd tmm1, [{cin} + {cins}*1 + 64]",
            "tileloadd tmm2, [{lo} + {cins}*1]",
            "tileloadd tmm3, [{lo} + {cins}*1 + 64]",
            "jmp 2f",
            "3:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
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
            "lea {lo}, [{cout} + {couts}*8]",
            "lea {lo}, [{lo} + {couts}*8]",
            "tilestored [{cout} + {couts}*1], tmm0",
            "tilestored [{cout} + {couts}*1 + 64], tmm1",
            "tilestored [{lo} + {couts}*1], tmm2",
            "tilestored [{lo} + {couts}*1 + 64], tmm3",
            cin = in(reg) cin,
            cins = in(reg) cin_stride,
            cout = in(reg) cout,
            couts = in(reg) cout_stride,
            lo = out(reg) _,
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
