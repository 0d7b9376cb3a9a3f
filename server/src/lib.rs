//! The OpenAI-compatible HTTP server over the `internvl` engine. Built in its own issue; nothing is
//! implemented here yet.
