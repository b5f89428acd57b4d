//! Empty on purpose: the programs are the `collector` binary target, built for BPF by
//! aya-build. This library exists so that `collector` can build-depend on the crate and be
//! rebuilt when it changes.
#![no_std]
