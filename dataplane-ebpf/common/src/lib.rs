//! Types shared by the eBPF programs (`dataplane-ebpf/programs`) and the userspace loader
//! (`control/proxy`).
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, has explicit padding and a size assert, and
//! never uses `bool`, `Option` or enums with niches. Map names and capacities live here as
//! constants so both sides agree; the eBPF statics carry exactly these names (a userspace test
//! looks every map up by the constant).
//!
//! With the `user` feature each type implements [`aya::Pod`].
#![no_std]

pub mod lb;
pub mod probe;
