fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|x| x.parse().unwrap()).collect();
    for _ in 0..5 {
        println!("{:.1}", kernels_cpu::gemm::avx2::bench_kernel_only(args[0], args[1], args[2], args[3]));
    }
}
