//! What the hosted speech-to-text adapters add per chunk, without the network: turning a batch of
//! caller audio into the vendor's message (Deepgram 40 ms and AssemblyAI 50 ms of binary PCM;
//! OpenAI 100 ms resampled to 24 kHz and base64 in JSON), and reading one result message (a
//! Deepgram `Results` and an AssemblyAI `Turn` with five words, an OpenAI `completed`). Each call
//! is timed on its own: `cargo bench --bench speech_adapters` prints p50, p99 and the worst per
//! chunk.
//!
//! The text-to-speech adapters work inside their sockets, so they are timed per chunk through one:
//! each chunk of an answer spoken by the ElevenLabs adapter over its `stream-input` WebSocket (and
//! by the OpenAI adapter over `/v1/audio/speech`) to the bench's fake vendor on loopback, which
//! answers at once. A chunk's time includes the loopback round trip and the fake's own work
//! (encoding the audio), so it is an upper bound on what the adapter adds.

use std::hint::black_box;
use std::time::Instant;

use voxgate::secret::Secret;
use voxgate::stt::assemblyai::AssemblyAi;
use voxgate::stt::deepgram::Deepgram;
use voxgate::stt::openai::OpenAiStt;
use voxgate::stt::stream::Protocol;

const ROUNDS: usize = 50_000;

fn percentiles(name: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!("{name:<38} p50 {:>7.2} µs   p99 {:>7.2} µs   max {:>8.2} µs", at(0.5), at(0.99), at(1.0));
}

fn time(name: &str, mut f: impl FnMut()) {
    for _ in 0..1_000 {
        f(); // warm caches and allocator
    }
    let mut ns = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        f();
        ns.push(started.elapsed().as_nanos() as u64);
    }
    percentiles(name, ns);
}

fn main() {
    let key = || Some(Secret::new("bench-key"));
    let speech: Vec<i16> = (0..1_600).map(|i| ((i as f64 * 0.19).sin() * 8_000.0) as i16).collect();

    let mut deepgram = Deepgram { base_url: "https://api.deepgram.com".into(), api_key: key(), model: "nova-3".into(), diarize: true };
    let mut assemblyai = AssemblyAi::new("wss://streaming.assemblyai.com".into(), key(), "universal-streaming-english".into(), true);
    let mut openai = OpenAiStt::new("https://api.openai.com/v1".into(), key(), "gpt-4o-transcribe".into());

    time("deepgram: 40 ms of audio out", || {
        black_box(deepgram.audio(black_box(&speech[..640])));
    });
    time("assemblyai: 50 ms of audio out", || {
        black_box(assemblyai.audio(black_box(&speech[..800])));
    });
    time("openai: 100 ms of audio out", || {
        black_box(openai.audio(black_box(&speech[..1_600])));
    });

    let results = r#"{"type":"Results","channel_index":[0,1],"start":1.0,"duration":1.2,"is_final":true,"speech_final":true,
        "channel":{"alternatives":[{"transcript":"Book a table for two.","confidence":0.93,"words":[
        {"word":"book","start":1.02,"end":1.3,"confidence":0.97,"punctuated_word":"Book","speaker":0},
        {"word":"a","start":1.3,"end":1.41,"confidence":0.62,"punctuated_word":"a","speaker":0},
        {"word":"table","start":1.41,"end":1.8,"confidence":0.95,"punctuated_word":"table","speaker":0},
        {"word":"for","start":1.8,"end":1.95,"confidence":0.9,"punctuated_word":"for","speaker":0},
        {"word":"two","start":1.95,"end":2.2,"confidence":0.88,"punctuated_word":"two.","speaker":0}]}]},
        "metadata":{"request_id":"r","model_info":{"name":"general-nova-3","version":"1","arch":"nova-3"},"model_uuid":"u"}}"#;
    time("deepgram: Results (5 words) in", || {
        black_box(deepgram.read(black_box(results)));
    });
    let turn = r#"{"type":"Turn","turn_order":3,"turn_is_formatted":false,"end_of_turn":false,"end_of_turn_confidence":0.2,
        "transcript":"book a table for","utterance":"","words":[
        {"text":"book","start":1020,"end":1300,"confidence":0.97,"word_is_final":true,"speaker":"A"},
        {"text":"a","start":1300,"end":1410,"confidence":0.62,"word_is_final":true,"speaker":"A"},
        {"text":"table","start":1410,"end":1800,"confidence":0.95,"word_is_final":true,"speaker":"A"},
        {"text":"for","start":1800,"end":1950,"confidence":0.9,"word_is_final":true,"speaker":"A"},
        {"text":"two","start":1950,"end":2200,"confidence":0.5,"word_is_final":false,"speaker":"A"}]}"#;
    time("assemblyai: Turn (5 words) in", || {
        black_box(assemblyai.read(black_box(turn)));
    });
    let committed = r#"{"type":"input_audio_buffer.committed","item_id":"item_1","previous_item_id":null}"#;
    let completed = r#"{"type":"conversation.item.input_audio_transcription.completed","item_id":"item_1","content_index":0,
        "transcript":"Book a table for two.","logprobs":[{"token":"Book","logprob":-0.05},{"token":" a","logprob":-0.2},
        {"token":" table","logprob":-0.01},{"token":" for","logprob":-0.1},{"token":" two.","logprob":-0.3}]}"#;
    time("openai: committed + completed in", || {
        black_box(openai.read(black_box(committed)));
        black_box(openai.read(black_box(completed)));
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(tts_chunks());
}

/// Chunks of answers through each socket-speaking TTS adapter, timed one by one.
async fn tts_chunks() {
    use voxgate::bench::vendor::{start_tts, start_tts_ws};
    use voxgate::llm::config::{ProviderConfig, ProviderKind};
    use voxgate::tts::{Chunk, Spoken, TtsContext};

    const CHUNKS: usize = 4_000;
    const PER_ANSWER: usize = 4;
    let sentence = "Your table is booked.";
    let instant = std::time::Duration::ZERO;
    let vendors = [
        (
            "elevenlabs: chunk over its WebSocket",
            ProviderKind::Elevenlabs,
            format!("http://{}", start_tts_ws(instant, false).await.unwrap()),
        ),
        ("openai: chunk over /v1/audio/speech", ProviderKind::Openai, format!("http://{}/v1", start_tts(instant, false).await.unwrap())),
    ];
    for (name, kind, base_url) in vendors {
        let provider = ProviderConfig {
            id: "bench".into(),
            kind,
            base_url,
            api_key: Some(Secret::new("bench-key")),
            model_path: None,
            connect_timeout_ms: 1_000,
            diarize: false,
        };
        let tts = voxgate::tts::vendor::build(&provider, None, Default::default()).expect("an adapter");
        let mut ns = Vec::with_capacity(CHUNKS);
        let mut samples = 0usize;
        for answer in 0..(CHUNKS + 200) / PER_ANSWER {
            let (context, _guard) = TtsContext::new();
            for _ in 0..PER_ANSWER {
                let (out, mut spoken) = tokio::sync::mpsc::channel(256);
                let chunk = Chunk { text: sentence.to_string(), voice: None, context: context.clone() };
                let started = Instant::now();
                let speaking = tts.speak(chunk, out);
                let drain = async {
                    while let Some(s) = spoken.recv().await {
                        if let Spoken::Audio { samples: s, .. } = s {
                            samples += s.len();
                        }
                    }
                };
                let (result, ()) = tokio::join!(speaking, drain);
                result.expect("the chunk is spoken");
                // The first 50 answers warm the sockets, caches and allocator.
                if answer >= 50 {
                    ns.push(started.elapsed().as_nanos() as u64);
                }
            }
        }
        assert!(samples > 0, "{name}: no audio");
        percentiles(name, ns);
    }
}
