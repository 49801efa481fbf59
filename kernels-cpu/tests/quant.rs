//! Block codecs against llama.cpp itself.
//!
//! `tests/fixtures/quant/ggml_ref.bin` (written by `tools/gen_quant_fixtures.py`; format in that
//! script's doc) holds f32 rows, the bytes llama.cpp's `ggml_quantize_chunk` wrote for them (no
//! imatrix: the `quantize_row_*_ref` reference quantizers) and gguf-py's dequantization of those
//! bytes. Every type must reproduce llama.cpp's bytes exactly and gguf's f32 values bit for bit.

use kernels_cpu::quant::{
    dequantize_rows, dequantize_rows_into, quantize_rows, quantize_rows_into, BlockType, QuantError,
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant/ggml_ref.bin");
const MAGIC: &[u8; 8] = b"MMQUANT\0";
const VERSION: u32 = 1;

struct Row {
    name: String,
    values: Vec<f32>,
}

struct Entry {
    ty: BlockType,
    row: usize,
    bytes: Vec<u8>,
    dequant: Vec<f32>,
}

/// A large set of generated rows of which the fixture keeps only digests.
struct Bulk {
    ty: BlockType,
    rows: usize,
    row_len: usize,
    seed: u64,
    input_digest: u64,
    bytes_digest: u64,
    dequant_digest: u64,
}

struct Fixture {
    info: String,
    rows: Vec<Row>,
    entries: Vec<Entry>,
    bulk: Vec<Bulk>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(self.pos + n <= self.buf.len(), "fixture truncated at byte {}", self.pos);
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.take(4 * n).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }
}

fn load() -> Fixture {
    let buf = std::fs::read(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
    let mut r = Reader { buf: &buf, pos: 0 };
    assert_eq!(r.take(8), MAGIC, "{FIXTURE}: not a medmoe quant fixture");
    assert_eq!(r.u32(), VERSION, "{FIXTURE}: fixture version");
    let n = r.u32() as usize;
    let info = String::from_utf8(r.take(n).to_vec()).expect("utf-8 info");
    let rows = (0..r.u32())
        .map(|_| {
            let n = r.u16() as usize;
            let name = String::from_utf8(r.take(n).to_vec()).expect("utf-8 row name");
            let len = r.u32() as usize;
            Row { name, values: r.f32s(len) }
        })
        .collect::<Vec<_>>();
    let entries = (0..r.u32())
        .map(|_| {
            let id = r.u32();
            let ty = BlockType::from_ggml_type_id(id).unwrap_or_else(|| panic!("unknown ggml type {id}"));
            let row = r.u32() as usize;
            let n = r.u32() as usize;
            let bytes = r.take(n).to_vec();
            let dequant = r.f32s(rows[row].values.len());
            Entry { ty, row, bytes, dequant }
        })
        .collect();
    let bulk = (0..r.u32())
        .map(|_| {
            let id = r.u32();
            Bulk {
                ty: BlockType::from_ggml_type_id(id).unwrap_or_else(|| panic!("unknown ggml type {id}")),
                rows: r.u32() as usize,
                row_len: r.u32() as usize,
                seed: r.u64(),
                input_digest: r.u64(),
                bytes_digest: r.u64(),
                dequant_digest: r.u64(),
            }
        })
        .collect();
    assert_eq!(r.take(4), b"END\0", "{FIXTURE}: missing end marker");
    assert_eq!(r.pos, buf.len(), "{FIXTURE}: trailing bytes");
    Fixture { info, rows, entries, bulk }
}

fn entries_of(f: &Fixture, ty: BlockType) -> impl Iterator<Item = &Entry> {
    f.entries.iter().filter(move |e| e.ty == ty)
}

#[test]
fn fixture_carries_its_format_version_and_regenerate_command() {
    let f = load();
    assert!(f.info.contains("format: medmoe-quant-fixture"), "{}", f.info);
    assert!(f.info.contains("regenerate: pyenv/bin/python tools/gen_quant_fixtures.py"), "{}", f.info);
    assert!(f.info.contains("xllamacpp: 2026.10.11549"), "{}", f.info);
    // Every type has rows, the K-quants at least 30 (random lengths 256/512/768 plus specials).
    for ty in BlockType::ALL {
        let n = entries_of(&f, ty).count();
        assert!(n >= 30, "{ty}: only {n} fixture rows");
    }
}

/// Our bytes for every fixture row, compared block by block with llama.cpp's.
#[test]
fn quantized_bytes_equal_llama_cpp_for_every_type_and_row() {
    let f = load();
    let mut report = Vec::new();
    for ty in BlockType::ALL {
        let (mut blocks, mut bad_blocks, mut rows) = (0usize, 0usize, 0usize);
        for e in entries_of(&f, ty) {
            let row = &f.rows[e.row];
            let ours = quantize_rows(ty, &row.values, row.values.len()).unwrap();
            assert_eq!(ours.len(), e.bytes.len(), "{ty} {}: byte length", row.name);
            let bb = ty.block_bytes();
            for (i, (a, b)) in ours.chunks(bb).zip(e.bytes.chunks(bb)).enumerate() {
                blocks += 1;
                if a != b {
                    bad_blocks += 1;
                    if bad_blocks <= 3 {
                        report.push(format!("{ty} row {} block {i}: ours {a:02x?}\n  llama.cpp {b:02x?}", row.name));
                    }
                }
            }
            rows += 1;
        }
        if bad_blocks > 0 {
            report.push(format!("{ty}: {bad_blocks} of {blocks} blocks differ ({rows} rows)"));
        }
    }
    assert!(report.is_empty(), "quantized bytes differ from llama.cpp:\n{}", report.join("\n"));
}

/// The parallel, batched and chunked (streaming) paths give the same bytes as llama.cpp.
#[test]
fn batched_and_streamed_quantization_equal_llama_cpp() {
    let f = load();
    for ty in BlockType::ALL {
        let mut lens: Vec<usize> = entries_of(&f, ty).map(|e| f.rows[e.row].values.len()).collect();
        lens.sort_unstable();
        lens.dedup();
        for n in lens {
            let group: Vec<&Entry> = entries_of(&f, ty).filter(|e| f.rows[e.row].values.len() == n).collect();
            let src: Vec<f32> = group.iter().flat_map(|e| f.rows[e.row].values.iter().copied()).collect();
            let want: Vec<u8> = group.iter().flat_map(|e| e.bytes.iter().copied()).collect();
            assert_eq!(quantize_rows(ty, &src, n).unwrap(), want, "{ty}: batch of {} rows of {n}", group.len());

            // Two rows at a time into a caller buffer.
            let row_bytes = ty.row_bytes(n).unwrap();
            let mut streamed = vec![0u8; want.len()];
            for (s, d) in src.chunks(2 * n).zip(streamed.chunks_mut(2 * row_bytes)) {
                quantize_rows_into(ty, s, n, d).unwrap();
            }
            assert_eq!(streamed, want, "{ty}: streamed rows of {n}");

            let deq_want: Vec<u32> = group.iter().flat_map(|e| e.dequant.iter().map(|v| v.to_bits())).collect();
            let mut deq = vec![0f32; src.len()];
            dequantize_rows_into(ty, &want, n, &mut deq).unwrap();
            assert!(deq.iter().map(|v| v.to_bits()).eq(deq_want), "{ty}: batched dequantization of rows of {n}");
        }
    }
}

/// Our dequantization of llama.cpp's bytes equals gguf-py's (= ggml's `dequantize_row_*`) bitwise.
#[test]
fn dequantization_is_bit_identical_to_gguf() {
    let f = load();
    let mut report = Vec::new();
    for e in &f.entries {
        let row = &f.rows[e.row];
        let ours = dequantize_rows(e.ty, &e.bytes, row.values.len()).unwrap();
        let bad: Vec<usize> = (0..ours.len()).filter(|&i| ours[i].to_bits() != e.dequant[i].to_bits()).collect();
        if !bad.is_empty() {
            let i = bad[0];
            report.push(format!(
                "{} row {}: {} of {} values differ, first at {i}: ours {:e} gguf {:e}",
                e.ty,
                row.name,
                bad.len(),
                ours.len(),
                ours[i],
                e.dequant[i]
            ));
        }
    }
    assert!(report.is_empty(), "dequantization differs from gguf:\n{}", report.join("\n"));
}

/// Relative RMS round-trip error `rms(x - deq(quant(x))) / rms(x)` on the random fixture rows
/// (names `<distribution>_<len>`), with the bound each type must meet: about 1.5x the worst row
/// measured (the `laplace` and `sparse` rows are the hardest). F32 must round-trip exactly.
#[test]
fn round_trip_error_is_within_stated_bounds() {
    // (type, bound, worst measured on the fixture rows when the bound was set)
    let bounds: [(BlockType, f64, f64); 10] = [
        (BlockType::F32, 0.0, 0.0),
        (BlockType::F16, 4e-4, 2.7e-4), // 11-bit significand: <= 2^-12 relative per value
        (BlockType::BF16, 3.5e-3, 2.2e-3), // 8-bit significand: <= 2^-9 relative per value
        (BlockType::Q8_0, 0.01, 0.0065),
        (BlockType::Q6_K, 0.033, 0.0218),
        (BlockType::Q5_1, 0.075, 0.0518),
        (BlockType::Q5_K, 0.065, 0.0449),
        (BlockType::Q5_0, 0.085, 0.0563),
        (BlockType::Q4_K, 0.13, 0.0864),
        (BlockType::Q4_0, 0.16, 0.1078),
    ];
    let f = load();
    let mut report = Vec::new();
    for (ty, bound, measured) in bounds {
        let mut worst = (0.0f64, String::new());
        for e in entries_of(&f, ty) {
            let row = &f.rows[e.row];
            let random = ["normal", "block_scales", "uniform", "laplace", "positive", "negative", "sparse"];
            if !random.iter().any(|p| row.name.starts_with(p)) {
                continue;
            }
            let back =
                dequantize_rows(ty, &quantize_rows(ty, &row.values, row.values.len()).unwrap(), row.values.len())
                    .unwrap();
            let err: f64 = row.values.iter().zip(&back).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
            let norm: f64 = row.values.iter().map(|&a| (a as f64).powi(2)).sum();
            let rel = (err / norm).sqrt();
            if rel > worst.0 {
                worst = (rel, row.name.clone());
            }
        }
        eprintln!(
            "{ty}: worst relative RMS round-trip error {:.5} ({}), bound {bound} (set at {measured})",
            worst.0, worst.1
        );
        if worst.0 > bound {
            report.push(format!("{ty}: {:.5} on {} > {bound}", worst.0, worst.1));
        }
    }
    assert!(report.is_empty(), "round-trip error above bound:\n{}", report.join("\n"));
}

/// splitmix64's finaliser.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Value `k` of the counter stream `(seed, tag)`, as `counter` in tools/gen_quant_fixtures.py.
fn counter(seed: u64, tag: u64, k: u64) -> u64 {
    mix64((seed ^ tag).wrapping_add(k.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// The bulk rows of tools/gen_quant_fixtures.py's `bulk_inputs`, operation for operation in f32:
/// uniform values in [-1, 1) (x16 for 1 in 256), a scale in [1, 8) per 32 values, a power-of-two
/// scale 2^-10..2^4 per row, and rows kept as is, made positive, negative or 3/4 zero.
fn bulk_inputs(seed: u64, rows: usize, row_len: usize) -> Vec<f32> {
    let two_m24 = f32::powi(2.0, -24);
    (0..rows * row_len)
        .map(|i| {
            let u = counter(seed, 0, i as u64);
            let ru = counter(seed, 0x524F57, (i / row_len) as u64);
            let bu = counter(seed, 0x424C4B, (i / 32) as u64);
            let mut v = (u >> 40) as f32 * two_m24 * 2.0 - 1.0;
            if u & 0xFF == 0 {
                v *= 16.0;
            }
            let bs = (bu >> 40) as f32 * two_m24 * 7.0 + 1.0;
            let rs = f32::powi(2.0, (ru % 15) as i32 - 10);
            let x = (v * bs) * rs;
            match (ru >> 8) % 4 {
                1 => x.abs(),
                2 => -x.abs(),
                3 if (u >> 8) & 3 != 0 => 0.0,
                _ => x,
            }
        })
        .collect()
}

fn digest_bytes(b: &[u8]) -> u64 {
    b.iter().enumerate().fold(0u64, |h, (i, &x)| h.wrapping_add(mix64(((i as u64) << 8) | x as u64)))
}

fn digest_f32(v: &[f32]) -> u64 {
    v.iter().enumerate().fold(0u64, |h, (i, &x)| h.wrapping_add(mix64(((i as u64) << 32) | x.to_bits() as u64)))
}

/// 2048 generated rows per type (512K values; only digests are stored): our bytes and our
/// dequantization match llama.cpp's and gguf's digests.
#[test]
fn bulk_rows_match_llama_cpp_digests() {
    let f = load();
    assert_eq!(f.bulk.len(), BlockType::ALL.len());
    let mut report = Vec::new();
    for b in &f.bulk {
        let x = bulk_inputs(b.seed, b.rows, b.row_len);
        assert_eq!(digest_f32(&x), b.input_digest, "{}: the bulk input generator differs from the Python one", b.ty);
        let q = quantize_rows(b.ty, &x, b.row_len).unwrap();
        if digest_bytes(&q) != b.bytes_digest {
            report.push(format!("{}: bytes of {} rows of {} differ from llama.cpp's", b.ty, b.rows, b.row_len));
        }
        let d = dequantize_rows(b.ty, &q, b.row_len).unwrap();
        if digest_f32(&d) != b.dequant_digest {
            report.push(format!("{}: dequantization of {} rows differs from gguf's", b.ty, b.rows));
        }
    }
    assert!(report.is_empty(), "bulk digests differ:\n{}", report.join("\n"));
}

#[test]
fn bad_lengths_are_typed_errors() {
    let x = vec![0.5f32; 512];
    assert_eq!(
        quantize_rows(BlockType::Q5_K, &x, 192),
        Err(QuantError::RowLength { ty: BlockType::Q5_K, row_len: 192, block_size: 256 })
    );
    assert_eq!(
        quantize_rows(BlockType::Q8_0, &x, 0),
        Err(QuantError::RowLength { ty: BlockType::Q8_0, row_len: 0, block_size: 32 })
    );
    assert_eq!(
        quantize_rows(BlockType::Q8_0, &x[..96], 64),
        Err(QuantError::ValueLength { ty: BlockType::Q8_0, len: 96, row_len: 64 })
    );
    let mut short = vec![0u8; 100];
    assert_eq!(
        quantize_rows_into(BlockType::Q6_K, &x, 256, &mut short),
        Err(QuantError::OutputLength {
            ty: BlockType::Q6_K,
            rows: 2,
            row_len: 256,
            expected: 420,
            got: 100,
            unit: "bytes"
        })
    );
    let q = quantize_rows(BlockType::Q6_K, &x, 256).unwrap();
    assert_eq!(
        dequantize_rows(BlockType::Q6_K, &q[..q.len() - 1], 256),
        Err(QuantError::ByteLength { ty: BlockType::Q6_K, len: 419, row_bytes: 210, row_len: 256 })
    );
    let mut out = vec![0f32; 100];
    assert!(matches!(
        dequantize_rows_into(BlockType::Q6_K, &q, 256, &mut out),
        Err(QuantError::OutputLength { got: 100, .. })
    ));
    assert_eq!(
        dequantize_rows(BlockType::Q4_K, &q, 300),
        Err(QuantError::RowLength { ty: BlockType::Q4_K, row_len: 300, block_size: 256 })
    );
    // The message names the type and the lengths.
    let msg = quantize_rows(BlockType::Q5_K, &x, 192).unwrap_err().to_string();
    assert!(msg.contains("Q5_K") && msg.contains("192") && msg.contains("256"), "{msg}");
    // Zero rows are fine.
    assert_eq!(quantize_rows(BlockType::Q4_0, &[], 64).unwrap(), Vec::<u8>::new());
}

#[test]
fn block_type_table_matches_ggml() {
    // (type, ggml id, name, block size, block bytes) from ggml.h / ggml-common.h.
    let table = [
        (BlockType::F32, 0, "F32", 1, 4),
        (BlockType::F16, 1, "F16", 1, 2),
        (BlockType::Q4_0, 2, "Q4_0", 32, 18),
        (BlockType::Q5_0, 6, "Q5_0", 32, 22),
        (BlockType::Q5_1, 7, "Q5_1", 32, 24),
        (BlockType::Q8_0, 8, "Q8_0", 32, 34),
        (BlockType::Q4_K, 12, "Q4_K", 256, 144),
        (BlockType::Q5_K, 13, "Q5_K", 256, 176),
        (BlockType::Q6_K, 14, "Q6_K", 256, 210),
        (BlockType::BF16, 30, "BF16", 1, 2),
    ];
    assert_eq!(table.len(), BlockType::ALL.len());
    for (ty, id, name, bs, bb) in table {
        assert_eq!((ty.ggml_type_id(), ty.name(), ty.block_size(), ty.block_bytes()), (id, name, bs, bb));
        assert_eq!(BlockType::from_ggml_type_id(id), Some(ty));
        assert_eq!(BlockType::from_name(&name.to_lowercase()), Some(ty));
    }
    assert_eq!(BlockType::from_ggml_type_id(3), None); // Q4_1: not implemented
    assert_eq!(BlockType::from_name("q3_k"), None);
    assert_eq!(BlockType::Q6_K.bits_per_weight(), 6.5625);
    assert_eq!(BlockType::Q5_K.row_bytes(2048), Ok(1408));
}

/// Rows are independent: the bytes do not depend on the rayon pool size.
#[test]
fn results_do_not_depend_on_thread_count() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (rows, n) = (96, 512);
    let x: Vec<f32> = (0..rows * n).map(|_| rng.gen_range(-1.0f32..1.0) * rng.gen_range(0.001f32..1.0)).collect();
    let run = |threads: usize, ty: BlockType| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let q = quantize_rows(ty, &x, n).unwrap();
            let d = dequantize_rows(ty, &q, n).unwrap();
            (q, d.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        })
    };
    for ty in BlockType::ALL {
        assert!(run(1, ty) == run(3, ty), "{ty}: 1 vs 3 threads");
    }
}
