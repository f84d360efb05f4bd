//! `tillstream`: the server and the operator's tools.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tillstream_ops::main(Some(tillstream_ops::MIMALLOC))
}
