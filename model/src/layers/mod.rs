//! The building blocks of a decoder block, named as in Hugging Face's modeling code.

pub mod attention;
pub mod linear;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod rope;
