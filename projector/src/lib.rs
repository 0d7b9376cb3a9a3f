//! Pixel shuffle and the `mlp1` projector between InternViT and the LLM. Built with the vision side; nothing
//! is implemented here yet.
