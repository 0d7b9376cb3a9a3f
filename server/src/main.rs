//! `server`: the OpenAI-compatible HTTP server.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use internvl::{embedded, InternVlModel};
use server::worker::Worker;
use server::{AppState, Options};

#[derive(Parser)]
#[command(about = "An OpenAI-compatible HTTP server for InternVL 2.5")]
struct Cli {
    /// InternVL 2.5 checkpoint directory. Without it, the small embedded checkpoint with random weights
    /// (its answers are gibberish) is served.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 23333)]
    port: u16,
    /// Accepted bearer keys (repeat, or several after one flag); without any, no key is needed.
    #[arg(long = "api-key", num_args = 1..)]
    api_keys: Vec<String>,
    /// The model id clients send (default: the checkpoint folder's name, or `internvl-embedded`).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Largest request body accepted, in bytes (images are sent inline, base64).
    #[arg(long, default_value_t = 64 << 20)]
    max_body_bytes: usize,
    /// Images per request at most.
    #[arg(long, default_value_t = 8)]
    max_images: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let served_model_name = cli.served_model_name.clone().unwrap_or_else(|| {
        cli.model
            .as_ref()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "internvl-embedded".to_string())
    });
    let worker = match cli.model.clone() {
        Some(dir) => {
            eprintln!("loading {} ...", dir.display());
            Worker::start(move || InternVlModel::load(&dir))
        }
        None => {
            eprintln!(
                "no --model given: serving the {}",
                embedded::INTERNVL_DESCRIPTION
            );
            Worker::start(embedded::internvl_model)
        }
    }
    .context("starting the model")?;
    let state = AppState::new(
        worker,
        Options {
            served_model_name: served_model_name.clone(),
            api_keys: cli.api_keys,
            max_body_bytes: cli.max_body_bytes,
            max_images: cli.max_images,
        },
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let address = format!("{}:{}", cli.host, cli.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding {address}"))?;
        eprintln!(
            "serving `{served_model_name}` on http://{}",
            listener.local_addr()?
        );
        axum::serve(listener, server::router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })
}
