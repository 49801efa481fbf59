fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|x| x.parse().unwrap()).collect();
    let mut best = 0f64;
    for _ in 0..args[4] {
        best = best.max(kernels_cpu::gemm::avx2::bench_kernel_only(args[0], args[1], args[2], args[3]));
    }
    println!("{}x{}x{}: best {:.1}", args[0], args[1], args[2], best);
}
