//! `renalscan-edge`: see `renalscan-edge --help` and `firmware/README.md`.

fn main() -> std::process::ExitCode {
    renalscan_edge::cli::main()
}
