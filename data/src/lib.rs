//! medmoe data: tokenizer, chat template, synthetic world, packing (stub until its own issue).
#![deny(missing_docs)]
