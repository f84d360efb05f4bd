//! The `tillstream` program, built inside the tests package so that its
//! end-to-end tests can run it as a process (cargo exposes only a
//! package's own binaries to its tests).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tillstream_ops::main(Some(tillstream_ops::MIMALLOC))
}
