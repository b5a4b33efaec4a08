use clap::Parser;
use tailor_server::config::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1).peekable();
    // `vllm serve ...`: standing in for vLLM under a Deployment rendered for it.
    let cli = if args.peek().is_some_and(|a| a == "serve") {
        args.next();
        tailor_server::vllm::cli(args, |k| std::env::var(k).ok()).unwrap_or_else(|e| e.exit())
    } else {
        Cli::parse()
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(tailor_server::serve::run(cli))
}
