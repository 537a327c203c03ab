//! Static post-training int8 quantization (work in progress).
