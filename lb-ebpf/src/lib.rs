//! Host-side stub: the XDP programs are the `lb` binary of this crate, built
//! for `bpfel-unknown-none` by `lb-userspace/build.rs`. This empty library
//! lets `lb-userspace` name the crate as a build dependency, so cargo rebuilds
//! the agent when the programs change.
#![no_std]
