//! InternViT (300M and 6B) from a `vision_config`. Built in the issue "The vision side and the whole
//! InternVL 2.5 pipeline on the CPU"; nothing is implemented here yet.
