//! One module per subcommand.

pub mod bench;
pub mod data;
pub mod data_prepare;
pub mod eval;
pub mod eval_sets;
pub mod eval_summary;
pub mod experiment;
pub mod export;
pub mod generate;
pub mod importance;
pub mod init;
pub mod inspect;
pub mod logits;
pub mod moqe;
pub mod quantize;
pub mod report;
pub mod report_data;
pub mod report_plots;
pub mod run;
pub mod surgery;
pub mod trace;
pub mod upcycle;
