//! One module per subcommand.

pub mod bench;
pub mod data;
pub mod export;
pub mod generate;
pub mod importance;
pub mod init;
pub mod inspect;
pub mod logits;
pub mod quantize;
pub mod run;
pub mod surgery;
pub mod trace;
pub mod upcycle;
