use std::process::ExitCode;

use clap::Parser as _;
use droptrace::cli::{Cli, Command};

/// Exit status for errors: bad input, missing privileges, an unsupported kernel.
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    // glibc gives each thread that allocates an arena of its own and keeps what they
    // free; two arenas keep a capture of weeks from holding several bursts' worth.
    // Its mmap threshold also rises to the largest block freed (up to 32 MB): after a
    // scan, the flow and line tables it grew and freed would be carved from the heap,
    // leaving holes a week of churn fragments (13,000 free pieces, 25-32 MB, in a
    // 40-minute soak). A fixed threshold keeps tables of 128 KiB and more in mappings of
    // their own, returned to the system when freed (glibc malloc/malloc.c, M_MMAP_THRESHOLD).
    // (musl, the release binary, has one allocator and returns what is freed.)
    #[cfg(target_env = "gnu")]
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp(None)
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!(e)),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Watch(args) => droptrace::commands::watch::run(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Serve(args) => droptrace::commands::serve::run(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Verify(args) => droptrace::commands::verify::run(args).await,
            Command::Top(args) => droptrace::commands::top::run(args)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Explain(args) => droptrace::commands::explain::run_explain(args),
            Command::Rules(args) => droptrace::commands::explain::run_rules(args),
            Command::Inventory(args) => droptrace::commands::inventory::run(args).await,
            Command::Audit(args) => droptrace::commands::audit::run(args).await,
            Command::Doctor(args) => droptrace::commands::doctor::run(args).await,
            Command::Completions { shell } => {
                // A closed pipe (`| head`) is not an error.
                print_ignoring_closed_pipe(&droptrace::cli::completions::script(shell))
            }
            Command::Man { page, dir } => match dir {
                Some(dir) => droptrace::cli::manual::write_all(&dir).map(|written| {
                    for path in written {
                        println!("{}", path.display());
                    }
                    ExitCode::SUCCESS
                }),
                None => droptrace::cli::manual::page(page.as_deref())
                    .and_then(|roff| print_ignoring_closed_pipe(roff.as_bytes())),
            },
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// Writes `bytes` to stdout; a reader that went away early is not an error.
fn print_ignoring_closed_pipe(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// One line on stderr: the error and its causes.
fn fail(e: &anyhow::Error) -> ExitCode {
    let msg: Vec<String> = e
        .chain()
        .map(|c| droptrace::escape::terminal(&c.to_string()).into_owned())
        .collect();
    eprintln!("droptrace: error: {}", msg.join(": "));
    ExitCode::from(EXIT_ERROR)
}
