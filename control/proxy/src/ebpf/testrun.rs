//! `BPF_PROG_TEST_RUN`: run a loaded program on a crafted packet without any interface.

use std::time::Duration;

use aya::programs::{ProgramError, TestRun, TestRunOptions, TestRunResult};

use crate::{Error, Result};

/// Headroom for programs that grow the packet (encapsulation, `bpf_xdp_adjust_head`).
const OUT_SLACK: usize = 256;

/// What one test run produced.
#[derive(Debug, Clone)]
pub struct PacketRun {
    /// The program's return code (an XDP action, a TC action, ...).
    pub action: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// Mean time per run as the kernel measured it (over `repeat` runs).
    pub duration: Duration,
}

/// Runs `program` on `packet` `repeat` times (at least once) and returns the action, the
/// output packet of the last run and the kernel's mean duration per run.
pub fn run<P>(name: &'static str, program: &P, packet: &[u8], repeat: u32) -> Result<PacketRun>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + OUT_SLACK];
    let cap = out.len();
    let opts = TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        repeat: repeat.max(1),
        ..Default::default()
    };
    let result = program
        .test_run(opts)
        .map_err(|source: ProgramError| Error::Program { name, source })?;
    let len = result.data_size_out as usize;
    if len > cap {
        return Err(Error::TestRunOutput { name, len, cap });
    }
    out.truncate(len);
    Ok(PacketRun {
        action: result.return_value,
        packet: out,
        duration: result.duration,
    })
}
