//! The building blocks of the Llama block, named as in Hugging Face's modeling code.

pub mod attention;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;
