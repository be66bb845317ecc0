//! The Realtime API mapped onto the session: client events to [`Command`]s ([`command`], which also
//! decodes base64 audio into PCM) and the session's [`Event`]s to server events ([`Projection`], which
//! adds event ids, output indexes, base64 audio in the client's format, error codes and parameter
//! paths, and the `Session` and `Response` objects). No socket and no engine: tests drive it directly.

use std::collections::HashMap;

use base64::Engine as _;

use super::{
    format_name, new_event_id, AudioFormatSpec, AudioInput, AudioOutput, ClientEvent, ContentPart, FunctionCallItem as WireCall,
    FunctionCallOutputItem as WireOutput, FunctionTool, FunctionType, InputTokenDetails, InputTranscription, Item as WireItem,
    ItemStatus as WireStatus, MaxOutputTokens, MessageItem as WireMessage, MeterInfo, Modality, OutputTokenDetails, RateLimit,
    RealtimeError, Response, ResponseConversation, ResponseParams, ResponsePart, ResponseStatus as WireResponseStatus, Role as WireRole,
    ServerEvent, ServerVad, Session, SessionAudio, SessionType, StageLatencies, StatusDetails, StatusError, StatusReason,
    ToolChoice as WireToolChoice, ToolChoiceMode, TranscriptionUsage, TurnDetection, Usage as WireUsage, VendorTurns, Voice as WireVoice,
    VoxgateResponseInfo, VoxgateSession, Word,
};
use crate::audio::{decode_to_pcm, encode_from_pcm, AudioFormat};
use crate::session::conversation::{
    Content, FunctionCallItem, FunctionCallOutputItem, Item, ItemStatus, MessageItem, Role, TranscriptRendering,
};
use crate::session::event::{CancelReason, ErrorKind, Event, ResponseStatus, ResponseSummary, SessionError, Setting};
use crate::session::settings::{Settings, SettingsUpdate, Tool, ToolChoice, Transcription, TurnUpdate, Voice};
use crate::session::{Command, Inbound, ResponseOverrides};
use crate::stt::Transcript;

// -------------------------------------------------------------------------------------------------
// Client events to commands
// -------------------------------------------------------------------------------------------------

/// The command a client event asks for, with its `event_id` as the reply reference; or the `error`
/// a client reads when the event cannot become one. `input_format` decodes audio appends.
pub fn command(event: ClientEvent, input_format: AudioFormat) -> Result<Inbound, RealtimeError> {
    let reply_to = event.event_id().map(str::to_string);
    let invalid = |code: &str, message: String, param: &str| RealtimeError {
        error_type: "invalid_request_error".into(),
        code: Some(code.into()),
        message,
        param: Some(param.into()),
        event_id: reply_to.clone(),
    };
    let command = match event {
        ClientEvent::SessionUpdate(update) => {
            let update = settings_update(update.session).map_err(|(code, message, param)| invalid(code, message, param))?;
            Command::Configure { update: Box::new(update), applied: None }
        }
        ClientEvent::InputAudioBufferAppend(append) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(append.audio.trim())
                .map_err(|e| invalid("invalid_audio", format!("audio is not valid base64: {e}"), "audio"))?;
            let mut samples = Vec::new();
            decode_to_pcm(input_format, &bytes, &mut samples)
                .map_err(|e| invalid("invalid_audio", format!("{e} (session input format is {})", format_name(input_format)), "audio"))?;
            Command::Audio { samples, rate_hz: input_format.rate_hz() }
        }
        ClientEvent::InputAudioBufferCommit(_) => Command::Commit,
        ClientEvent::InputAudioBufferClear(_) => Command::ClearInput,
        ClientEvent::ConversationItemCreate(create) => {
            if let WireItem::Message(m) = &create.item {
                if m.content.iter().any(|p| matches!(p, ContentPart::InputAudio { audio: Some(_), .. })) {
                    return Err(invalid(
                        "unsupported_content",
                        "input_audio content in conversation.item.create is not supported; append audio with input_audio_buffer.append"
                            .into(),
                        "item.content",
                    ));
                }
            }
            Command::AddItem { item: item_from_wire(create.item), previous_item_id: create.previous_item_id }
        }
        ClientEvent::ConversationItemRetrieve(r) => Command::RetrieveItem { item_id: r.item_id },
        ClientEvent::ConversationItemTruncate(t) => {
            if t.content_index != 0 {
                return Err(invalid("invalid_value", "content_index must be 0".into(), "content_index"));
            }
            Command::Heard { item_id: t.item_id, ms: t.audio_end_ms }
        }
        ClientEvent::ConversationItemDelete(d) => Command::DeleteItem { item_id: d.item_id },
        ClientEvent::ResponseCreate(create) => {
            let overrides =
                response_overrides(create.response.unwrap_or_default()).map_err(|(code, message, param)| invalid(code, message, param))?;
            Command::CreateResponse(Box::new(overrides))
        }
        ClientEvent::ResponseCancel(c) => Command::Cancel { response_id: c.response_id },
        ClientEvent::OutputAudioBufferClear(_) => Command::ClearOutput,
    };
    Ok(Inbound { command, reply_to })
}

/// A wire-level refusal: the error code, message and parameter path.
type Refusal = (&'static str, String, &'static str);

/// `session.update`'s `session` as a settings update. What only the session can check (the model,
/// a voice engine for audio, value ranges) it checks itself.
pub fn settings_update(session: Session) -> Result<SettingsUpdate, Refusal> {
    if session.session_type == Some(SessionType::Transcription) {
        return Err(("invalid_value", "session.type \"transcription\" is not supported; use \"realtime\"".into(), "session.type"));
    }
    let mut update = SettingsUpdate { model: session.model, instructions: session.instructions, ..SettingsUpdate::default() };
    if let Some(modalities) = session.output_modalities {
        update.audio_out = Some(audio_out(&modalities).ok_or_else(|| {
            ("invalid_value", "output_modalities must be [\"audio\"] or [\"text\"]".to_string(), "session.output_modalities")
        })?);
    }
    if let Some(audio) = session.audio {
        if let Some(input) = audio.input {
            if let Some(spec) = input.format {
                update.input_format =
                    Some(spec.to_audio_format().map_err(|e| ("invalid_audio_format", e.to_string(), "session.audio.input.format"))?);
            }
            update.turn = match input.turn_detection {
                None => None,
                Some(None) => Some(None),
                Some(Some(TurnDetection::SemanticVad(_))) => {
                    return Err((
                        "invalid_value",
                        "semantic_vad is not supported yet; use server_vad or null".into(),
                        "session.audio.input.turn_detection.type",
                    ))
                }
                Some(Some(TurnDetection::ServerVad(v))) => Some(Some(TurnUpdate {
                    threshold: v.threshold,
                    prefix_padding_ms: v.prefix_padding_ms,
                    silence_duration_ms: v.silence_duration_ms,
                    create_response: v.create_response,
                    interrupt_response: v.interrupt_response,
                    by_vendor: Some(false),
                })),
                Some(Some(TurnDetection::Vendor(v))) => Some(Some(TurnUpdate {
                    create_response: v.create_response,
                    interrupt_response: v.interrupt_response,
                    by_vendor: Some(true),
                    ..TurnUpdate::default()
                })),
            };
            update.transcription =
                input.transcription.map(|t| t.map(|t| Transcription { model: t.model, language: t.language, prompt: t.prompt }));
        }
        if let Some(output) = audio.output {
            if let Some(spec) = output.format {
                update.output_format =
                    Some(spec.to_audio_format().map_err(|e| ("invalid_audio_format", e.to_string(), "session.audio.output.format"))?);
            }
            update.voice = output.voice.map(voice_from_wire);
        }
    }
    update.tools = session.tools.map(|tools| tools.into_iter().map(tool_from_wire).collect());
    update.tool_choice = session.tool_choice.map(tool_choice_from_wire);
    update.max_output_tokens = session.max_output_tokens.map(max_tokens);
    if let Some(name) = session.voxgate.and_then(|v| v.transcript_rendering) {
        update.transcript_rendering = Some(rendering_from_wire(&name).ok_or_else(|| {
            let name: String = name.chars().take(RENDERING_ECHO_CHARS_MAX).collect();
            (
                "invalid_value",
                format!("transcript_rendering {name:?} is not one of \"text\", \"speaker\", \"detailed\""),
                "session.voxgate.transcript_rendering",
            )
        })?);
    }
    Ok(update)
}

/// Longest unknown `transcript_rendering` an error message repeats.
const RENDERING_ECHO_CHARS_MAX: usize = 64;

/// `session.voxgate.transcript_rendering` as the session's setting.
fn rendering_from_wire(name: &str) -> Option<TranscriptRendering> {
    match name {
        "text" => Some(TranscriptRendering::Text),
        "speaker" => Some(TranscriptRendering::Speaker),
        "detailed" => Some(TranscriptRendering::Detailed),
        _ => None,
    }
}

/// The wire name of a rendering.
fn rendering_name(rendering: TranscriptRendering) -> &'static str {
    match rendering {
        TranscriptRendering::Text => "text",
        TranscriptRendering::Speaker => "speaker",
        TranscriptRendering::Detailed => "detailed",
    }
}

/// `response.create`'s `response` as overrides.
pub fn response_overrides(params: ResponseParams) -> Result<ResponseOverrides, Refusal> {
    let audio_out = match params.output_modalities {
        None => None,
        Some(m) => Some(audio_out(&m).ok_or_else(|| {
            ("invalid_value", "output_modalities must be [\"audio\"] or [\"text\"]".to_string(), "response.output_modalities")
        })?),
    };
    Ok(ResponseOverrides {
        out_of_band: params.conversation == Some(ResponseConversation::OutOfBand),
        input: params.input.map(|items| items.into_iter().map(item_from_wire).collect()),
        instructions: params.instructions,
        tools: params.tools.map(|tools| tools.into_iter().map(tool_from_wire).collect()),
        tool_choice: params.tool_choice.map(tool_choice_from_wire),
        audio_out,
        max_output_tokens: params.max_output_tokens.map(max_tokens),
        metadata: params.metadata,
    })
}

fn audio_out(modalities: &[Modality]) -> Option<bool> {
    match modalities {
        [Modality::Audio] => Some(true),
        [Modality::Text] => Some(false),
        _ => None,
    }
}

fn max_tokens(max: MaxOutputTokens) -> Option<u32> {
    match max {
        MaxOutputTokens::Limit(n) => Some(n),
        MaxOutputTokens::Inf => None,
    }
}

fn voice_from_wire(voice: WireVoice) -> Voice {
    match voice {
        WireVoice::Name(n) => Voice::Name(n),
        WireVoice::Id { id } => Voice::Id(id),
    }
}

fn voice_to_wire(voice: &Voice) -> WireVoice {
    match voice {
        Voice::Name(n) => WireVoice::Name(n.clone()),
        Voice::Id(id) => WireVoice::Id { id: id.clone() },
    }
}

fn tool_from_wire(tool: FunctionTool) -> Tool {
    Tool { name: tool.name, description: tool.description, parameters: tool.parameters }
}

fn tool_choice_from_wire(choice: WireToolChoice) -> ToolChoice {
    match choice {
        WireToolChoice::Mode(ToolChoiceMode::None) => ToolChoice::None,
        WireToolChoice::Mode(ToolChoiceMode::Auto) => ToolChoice::Auto,
        WireToolChoice::Mode(ToolChoiceMode::Required) => ToolChoice::Required,
        WireToolChoice::Function { name, .. } => ToolChoice::Function(name),
    }
}

fn tool_choice_to_wire(choice: &ToolChoice) -> WireToolChoice {
    match choice {
        ToolChoice::None => WireToolChoice::Mode(ToolChoiceMode::None),
        ToolChoice::Auto => WireToolChoice::Mode(ToolChoiceMode::Auto),
        ToolChoice::Required => WireToolChoice::Mode(ToolChoiceMode::Required),
        ToolChoice::Function(name) => WireToolChoice::Function { tool_type: FunctionType::Function, name: name.clone() },
    }
}

/// A client's item as the session keeps it: audio is never kept (the server never echoes it).
pub fn item_from_wire(item: WireItem) -> Item {
    let status = |s: Option<WireStatus>| {
        s.map(|s| match s {
            WireStatus::InProgress => ItemStatus::InProgress,
            WireStatus::Completed => ItemStatus::Completed,
            WireStatus::Incomplete => ItemStatus::Incomplete,
        })
    };
    match item {
        WireItem::Message(m) => Item::Message(MessageItem {
            id: m.id,
            status: status(m.status),
            role: match m.role {
                WireRole::System => Role::System,
                WireRole::User => Role::User,
                WireRole::Assistant => Role::Assistant,
            },
            content: m.content.into_iter().map(content_from_wire).collect(),
        }),
        WireItem::FunctionCall(c) => Item::FunctionCall(FunctionCallItem {
            id: c.id,
            status: status(c.status),
            call_id: c.call_id,
            name: c.name,
            arguments: c.arguments,
        }),
        WireItem::FunctionCallOutput(o) => {
            Item::FunctionCallOutput(FunctionCallOutputItem { id: o.id, status: status(o.status), call_id: o.call_id, output: o.output })
        }
    }
}

fn content_from_wire(part: ContentPart) -> Content {
    match part {
        ContentPart::InputText { text } => Content::InputText { text },
        ContentPart::InputAudio { transcript, .. } => Content::InputAudio { transcript },
        ContentPart::OutputText { text } => Content::OutputText { text },
        ContentPart::OutputAudio { transcript, .. } => Content::OutputAudio { transcript },
    }
}

/// The text of a wire message's parts, as the model reads it.
pub fn message_text(content: &[ContentPart]) -> String {
    crate::session::conversation::message_text(&content.iter().cloned().map(content_from_wire).collect::<Vec<_>>())
}

/// A session item on the wire.
pub fn item_to_wire(item: &Item) -> WireItem {
    let status = |s: Option<ItemStatus>| {
        s.map(|s| match s {
            ItemStatus::InProgress => WireStatus::InProgress,
            ItemStatus::Completed => WireStatus::Completed,
            ItemStatus::Incomplete => WireStatus::Incomplete,
        })
    };
    match item {
        Item::Message(m) => WireItem::Message(WireMessage {
            id: m.id.clone(),
            status: status(m.status),
            role: match m.role {
                Role::System => WireRole::System,
                Role::User => WireRole::User,
                Role::Assistant => WireRole::Assistant,
            },
            content: m
                .content
                .iter()
                .map(|p| match p {
                    Content::InputText { text } => ContentPart::InputText { text: text.clone() },
                    Content::InputAudio { transcript } => ContentPart::InputAudio { audio: None, transcript: transcript.clone() },
                    Content::OutputText { text } => ContentPart::OutputText { text: text.clone() },
                    Content::OutputAudio { transcript } => ContentPart::OutputAudio { audio: None, transcript: transcript.clone() },
                })
                .collect(),
        }),
        Item::FunctionCall(c) => WireItem::FunctionCall(WireCall {
            id: c.id.clone(),
            status: status(c.status),
            call_id: c.call_id.clone(),
            name: c.name.clone(),
            arguments: c.arguments.clone(),
        }),
        Item::FunctionCallOutput(o) => WireItem::FunctionCallOutput(WireOutput {
            id: o.id.clone(),
            status: status(o.status),
            call_id: o.call_id.clone(),
            output: o.output.clone(),
        }),
    }
}

// -------------------------------------------------------------------------------------------------
// Session events to server events
// -------------------------------------------------------------------------------------------------

/// The Realtime view of one session's events: what a response's items are called by index.
#[derive(Default)]
pub struct Projection {
    /// Each response in progress: its output items' ids, by output index.
    outputs: HashMap<String, Vec<String>>,
    audio_bytes: Vec<u8>,
}

impl Projection {
    fn output_index(&self, response_id: &str, item_id: &str) -> u32 {
        self.outputs.get(response_id).and_then(|ids| ids.iter().position(|id| id == item_id)).unwrap_or(0) as u32
    }

    /// The server events for one session event, handed to `emit` in order.
    pub fn events(&mut self, event: Event, mut emit: impl FnMut(ServerEvent)) {
        let event_id = new_event_id;
        match event {
            Event::Settings { session_id, settings, created } => {
                let session = session_object(&session_id, &settings);
                emit(if created {
                    ServerEvent::SessionCreated { event_id: event_id(), session }
                } else {
                    ServerEvent::SessionUpdated { event_id: event_id(), session }
                });
            }
            Event::Error(error) => emit(ServerEvent::error(realtime_error(error))),
            Event::SpeechStarted { item_id, audio_start_ms } => {
                emit(ServerEvent::InputAudioBufferSpeechStarted { event_id: event_id(), audio_start_ms, item_id })
            }
            Event::SpeechStopped { item_id, audio_end_ms } => {
                emit(ServerEvent::InputAudioBufferSpeechStopped { event_id: event_id(), audio_end_ms, item_id })
            }
            Event::InputCommitted { item_id, previous_item_id } => {
                emit(ServerEvent::InputAudioBufferCommitted { event_id: event_id(), previous_item_id, item_id })
            }
            Event::InputCleared => emit(ServerEvent::InputAudioBufferCleared { event_id: event_id() }),
            Event::TranscriptPartial { item_id, delta, transcript } => emit(ServerEvent::InputAudioTranscriptionDelta {
                event_id: event_id(),
                item_id,
                content_index: 0,
                delta,
                words: Some(words(&transcript)),
                speaker: transcript.speaker,
                engine: transcript.engine,
            }),
            Event::TranscriptFinal { item_id, transcript } => {
                let seconds = transcript.words.last().map_or(0.0, |w| w.end_ms as f64 / 1000.0);
                emit(ServerEvent::InputAudioTranscriptionCompleted {
                    event_id: event_id(),
                    item_id,
                    content_index: 0,
                    words: Some(words(&transcript)),
                    transcript: transcript.text,
                    usage: TranscriptionUsage::Duration { seconds },
                    speaker: transcript.speaker,
                    engine: transcript.engine,
                })
            }
            Event::TranscriptFailed { item_id, code, message } => emit(ServerEvent::InputAudioTranscriptionFailed {
                event_id: event_id(),
                item_id,
                content_index: 0,
                error: RealtimeError::server(code, message),
            }),
            Event::ItemAdded { item, previous_item_id } => {
                emit(ServerEvent::ConversationItemAdded { event_id: event_id(), previous_item_id, item: item_to_wire(&item) })
            }
            Event::ItemDone { item, previous_item_id } => {
                emit(ServerEvent::ConversationItemDone { event_id: event_id(), previous_item_id, item: item_to_wire(&item) })
            }
            Event::ItemRetrieved { item } => {
                emit(ServerEvent::ConversationItemRetrieved { event_id: event_id(), item: item_to_wire(&item) })
            }
            Event::ItemDeleted { item_id } => emit(ServerEvent::ConversationItemDeleted { event_id: event_id(), item_id }),
            Event::ItemTruncated { item_id, audio_end_ms } => {
                emit(ServerEvent::ConversationItemTruncated { event_id: event_id(), item_id, content_index: 0, audio_end_ms })
            }
            Event::ResponseStarted { response_id, audio, metadata } => {
                self.outputs.insert(response_id.clone(), Vec::new());
                let mut response = Response::in_progress(response_id);
                response.output_modalities = Some(vec![modality(audio)]);
                response.metadata = metadata;
                emit(ServerEvent::ResponseCreated { event_id: event_id(), response });
            }
            Event::OutputItemAdded { response_id, item, conversation } => {
                let item_id = item.id().unwrap_or_default().to_string();
                let ids = self.outputs.entry(response_id.clone()).or_default();
                let output_index = ids.len() as u32;
                ids.push(item_id.clone());
                let wire = item_to_wire(&item);
                emit(ServerEvent::ResponseOutputItemAdded {
                    event_id: event_id(),
                    response_id: response_id.clone(),
                    output_index,
                    item: wire.clone(),
                });
                if let Some(joined) = conversation {
                    emit(ServerEvent::ConversationItemAdded {
                        event_id: event_id(),
                        previous_item_id: joined.previous_item_id,
                        item: wire,
                    });
                }
                if let Item::Message(m) = &item {
                    let part = match m.content.first() {
                        Some(Content::OutputAudio { .. }) => ResponsePart::Audio { audio: None, transcript: String::new() },
                        _ => ResponsePart::Text { text: String::new() },
                    };
                    emit(ServerEvent::ResponseContentPartAdded {
                        event_id: event_id(),
                        response_id,
                        item_id,
                        output_index,
                        content_index: 0,
                        part,
                    });
                }
            }
            Event::OutputItemDone { response_id, item } => {
                let item_id = item.id().unwrap_or_default().to_string();
                let output_index = self.output_index(&response_id, &item_id);
                match &item {
                    Item::Message(m) => {
                        let part = match m.content.first() {
                            Some(Content::OutputAudio { transcript }) => {
                                let transcript = transcript.clone().unwrap_or_default();
                                emit(ServerEvent::ResponseOutputAudioDone {
                                    event_id: event_id(),
                                    response_id: response_id.clone(),
                                    item_id: item_id.clone(),
                                    output_index,
                                    content_index: 0,
                                });
                                emit(ServerEvent::ResponseOutputAudioTranscriptDone {
                                    event_id: event_id(),
                                    response_id: response_id.clone(),
                                    item_id: item_id.clone(),
                                    output_index,
                                    content_index: 0,
                                    transcript: transcript.clone(),
                                });
                                ResponsePart::Audio { audio: None, transcript }
                            }
                            Some(Content::OutputText { text }) => {
                                emit(ServerEvent::ResponseOutputTextDone {
                                    event_id: event_id(),
                                    response_id: response_id.clone(),
                                    item_id: item_id.clone(),
                                    output_index,
                                    content_index: 0,
                                    text: text.clone(),
                                });
                                ResponsePart::Text { text: text.clone() }
                            }
                            _ => ResponsePart::Text { text: String::new() },
                        };
                        emit(ServerEvent::ResponseContentPartDone {
                            event_id: event_id(),
                            response_id: response_id.clone(),
                            item_id,
                            output_index,
                            content_index: 0,
                            part,
                        });
                    }
                    Item::FunctionCall(c) if c.status == Some(ItemStatus::Completed) => {
                        emit(ServerEvent::ResponseFunctionCallArgumentsDone {
                            event_id: event_id(),
                            response_id: response_id.clone(),
                            item_id,
                            output_index,
                            call_id: c.call_id.clone().unwrap_or_default(),
                            name: c.name.clone(),
                            arguments: c.arguments.clone(),
                        });
                    }
                    _ => {}
                }
                emit(ServerEvent::ResponseOutputItemDone { event_id: event_id(), response_id, output_index, item: item_to_wire(&item) });
            }
            Event::TextDelta { response_id, item_id, delta } => {
                let output_index = self.output_index(&response_id, &item_id);
                emit(ServerEvent::ResponseOutputTextDelta {
                    event_id: event_id(),
                    response_id,
                    item_id,
                    output_index,
                    content_index: 0,
                    delta,
                });
            }
            Event::SpokenText { response_id, item_id, delta } => {
                let output_index = self.output_index(&response_id, &item_id);
                emit(ServerEvent::ResponseOutputAudioTranscriptDelta {
                    event_id: event_id(),
                    response_id,
                    item_id,
                    output_index,
                    content_index: 0,
                    delta,
                });
            }
            Event::Audio { response_id, item_id, samples, format } => {
                let output_index = self.output_index(&response_id, &item_id);
                self.audio_bytes.clear();
                encode_from_pcm(format, &samples, &mut self.audio_bytes);
                let delta = base64::engine::general_purpose::STANDARD.encode(&self.audio_bytes);
                emit(ServerEvent::ResponseOutputAudioDelta {
                    event_id: event_id(),
                    response_id,
                    item_id,
                    output_index,
                    content_index: 0,
                    delta,
                });
            }
            Event::AudioStarted { response_id } => emit(ServerEvent::OutputAudioBufferStarted { event_id: event_id(), response_id }),
            Event::AudioStopped { response_id } => emit(ServerEvent::OutputAudioBufferStopped { event_id: event_id(), response_id }),
            Event::AudioCleared { response_id } => emit(ServerEvent::OutputAudioBufferCleared { event_id: event_id(), response_id }),
            Event::ToolCallDelta { response_id, item_id, call_id, delta } => {
                let output_index = self.output_index(&response_id, &item_id);
                emit(ServerEvent::ResponseFunctionCallArgumentsDelta {
                    event_id: event_id(),
                    response_id,
                    item_id,
                    output_index,
                    call_id,
                    delta,
                });
            }
            Event::ResponseDone(summary) => {
                self.outputs.remove(&summary.id);
                emit(ServerEvent::ResponseDone { event_id: event_id(), response: response_object(*summary) });
            }
            Event::RateLimits(budgets) => {
                let rate_limits = budgets
                    .into_iter()
                    .map(|b| RateLimit {
                        name: b.name.to_string(),
                        limit: b.limit,
                        remaining: b.remaining,
                        reset_seconds: b.reset.as_secs_f64(),
                    })
                    .collect();
                emit(ServerEvent::RateLimitsUpdated { event_id: event_id(), rate_limits });
            }
        }
    }
}

fn modality(audio: bool) -> Modality {
    if audio {
        Modality::Audio
    } else {
        Modality::Text
    }
}

fn words(t: &Transcript) -> Vec<Word> {
    t.words.iter().map(|w| Word { text: w.text.clone(), start_ms: w.start_ms, end_ms: w.end_ms, confidence: w.confidence as f64 }).collect()
}

/// The `Session` object of `session.created` / `session.updated`.
pub fn session_object(session_id: &str, s: &Settings) -> Session {
    let turn_detection = Some(s.turn.map(|t| {
        if t.by_vendor {
            return TurnDetection::Vendor(VendorTurns {
                create_response: Some(t.create_response),
                interrupt_response: Some(t.interrupt_response),
            });
        }
        TurnDetection::ServerVad(ServerVad {
            threshold: Some(t.vad.threshold as f64),
            prefix_padding_ms: Some(t.vad.prefix_padding_ms),
            silence_duration_ms: Some(t.vad.silence_duration_ms),
            create_response: Some(t.create_response),
            interrupt_response: Some(t.interrupt_response),
            idle_timeout_ms: None,
        })
    }));
    let transcription = s.transcription.clone().map(|t| InputTranscription { model: t.model, language: t.language, prompt: t.prompt });
    Session {
        session_type: Some(SessionType::Realtime),
        id: Some(session_id.to_string()),
        object: Some("realtime.session".into()),
        model: Some(s.model.clone()),
        expires_at: None,
        instructions: Some(s.instructions.clone().unwrap_or_default()),
        output_modalities: Some(vec![modality(s.audio_out)]),
        audio: Some(SessionAudio {
            input: Some(AudioInput {
                format: Some(AudioFormatSpec::from(s.input_format)),
                turn_detection,
                transcription: Some(transcription),
            }),
            output: Some(AudioOutput {
                format: Some(AudioFormatSpec::from(s.output_format)),
                voice: s.voice.as_ref().map(voice_to_wire),
                speed: None,
            }),
        }),
        tools: Some(
            s.tools
                .iter()
                .map(|t| FunctionTool {
                    tool_type: FunctionType::Function,
                    name: t.name.clone(),
                    description: t.description.clone(),
                    parameters: t.parameters.clone(),
                })
                .collect(),
        ),
        tool_choice: Some(s.tool_choice.as_ref().map_or(WireToolChoice::Mode(ToolChoiceMode::Auto), tool_choice_to_wire)),
        max_output_tokens: Some(s.max_output_tokens.map_or(MaxOutputTokens::Inf, MaxOutputTokens::Limit)),
        // At its default the extension is left out: standard clients (and the recorded sessions
        // in fixtures/recordings/) see the session object exactly as before.
        voxgate: (s.transcript_rendering != TranscriptRendering::default())
            .then(|| VoxgateSession { transcript_rendering: Some(rendering_name(s.transcript_rendering).to_string()) }),
    }
}

/// The `Response` object of `response.done`.
fn response_object(summary: ResponseSummary) -> Response {
    let (status, status_details) = match summary.status {
        ResponseStatus::Completed => (WireResponseStatus::Completed, None),
        ResponseStatus::Cancelled(reason) => {
            let reason = match reason {
                CancelReason::TurnDetected => StatusReason::TurnDetected,
                CancelReason::ClientCancelled => StatusReason::ClientCancelled,
            };
            let status = WireResponseStatus::Cancelled;
            (status, Some(StatusDetails { status_type: Some(status), reason: Some(reason), error: None }))
        }
        ResponseStatus::Incomplete => {
            let status = WireResponseStatus::Incomplete;
            (status, Some(StatusDetails { status_type: Some(status), reason: Some(StatusReason::MaxOutputTokens), error: None }))
        }
        ResponseStatus::Failed { code, message } => {
            let status = WireResponseStatus::Failed;
            let error = StatusError { error_type: Some("server_error".into()), code: Some(code), message: Some(message) };
            (status, Some(StatusDetails { status_type: Some(status), reason: None, error: Some(error) }))
        }
    };
    let usage = summary.usage.map(|u| WireUsage {
        total_tokens: u.input_tokens + u.output_tokens,
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        input_token_details: InputTokenDetails {
            cached_tokens: u.cached_input_tokens,
            text_tokens: u.input_tokens,
            audio_tokens: 0,
            cached_tokens_details: None,
        },
        output_token_details: OutputTokenDetails { text_tokens: u.output_tokens, audio_tokens: 0 },
    });
    let meter = summary.meter.map(|m| MeterInfo {
        billed_seconds: m.billed_seconds,
        amount_usd: m.amount.display_usd_full().trim_start_matches('$').to_string(),
    });
    let l = summary.latencies;
    let voxgate = (summary.model.is_some() || meter.is_some()).then_some(VoxgateResponseInfo {
        model: summary.model,
        tts_engine: summary.tts_engine,
        latency_ms: StageLatencies { stt: l.stt, llm_ttft: l.llm_ttft, tts_ttfb: l.tts_ttfb, voice_to_voice: l.voice_to_voice },
        meter,
    });
    let mut response = Response::in_progress(summary.id);
    response.status = status;
    response.status_details = status_details;
    response.output = summary.output.iter().map(item_to_wire).collect();
    response.output_modalities = Some(vec![modality(summary.audio)]);
    response.usage = Some(usage.unwrap_or_default());
    response.metadata = summary.metadata;
    response.voxgate = voxgate;
    response
}

/// A session error as a Realtime `error`: the code for its kind, the parameter path of the setting,
/// the client's `event_id`. A refusal by the key's rate limit is typed by the limit (`requests`).
pub fn realtime_error(error: SessionError) -> RealtimeError {
    let (error_type, code) = match error.kind {
        ErrorKind::RateLimited { limit } => (limit, "rate_limit_exceeded"),
        kind => (
            "invalid_request_error",
            match kind {
                ErrorKind::InvalidValue => "invalid_value",
                ErrorKind::TtsUnavailable => "tts_unavailable",
                ErrorKind::SttUnavailable => "stt_unavailable",
                ErrorKind::InputEmpty => "input_audio_buffer_commit_empty",
                ErrorKind::ItemNotFound => "item_not_found",
                ErrorKind::UnknownCallId => "unknown_call_id",
                ErrorKind::ResponseAlreadyActive => "conversation_already_has_active_response",
                ErrorKind::NoActiveResponse => "response_cancel_not_active",
                ErrorKind::RateLimited { .. } => "rate_limit_exceeded",
                ErrorKind::SessionExpired => "session_expired",
                ErrorKind::IdleTimeout => "idle_timeout",
            },
        ),
    };
    RealtimeError {
        error_type: error_type.to_string(),
        code: Some(code.to_string()),
        message: error.message,
        param: error.setting.map(|s| param_path(s).to_string()),
        event_id: error.reply_to,
    }
}

/// Where a setting lives in the Realtime API's events.
fn param_path(setting: Setting) -> &'static str {
    match setting {
        Setting::Model => "session.model",
        Setting::OutputModalities => "session.output_modalities",
        Setting::TurnThreshold => "session.audio.input.turn_detection.threshold",
        Setting::TurnType => "session.audio.input.turn_detection.type",
        Setting::Audio => "audio",
        Setting::ItemId => "item_id",
        Setting::ItemCallId => "item.call_id",
        Setting::ItemContent => "item.content",
        Setting::PreviousItemId => "previous_item_id",
        Setting::ResponseOutputModalities => "response.output_modalities",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::conversation::Role;
    use crate::session::event::{Joined, Latencies, MeterReading};
    use crate::session::settings::Turn;
    use crate::transport::realtime::parse_client_event;

    fn client(json: serde_json::Value) -> ClientEvent {
        parse_client_event(&json.to_string()).expect("a valid client event")
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn appends_become_pcm_in_the_session_input_format() {
        let samples: [i16; 3] = [1, -2, 300];
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let event = client(serde_json::json!({"type": "input_audio_buffer.append", "event_id": "e1", "audio": b64(&bytes)}));
        let inbound = command(event, AudioFormat::REALTIME_PCM).unwrap();
        assert_eq!(inbound.reply_to.as_deref(), Some("e1"));
        let Command::Audio { samples: got, rate_hz } = inbound.command else { panic!("{:?}", inbound.command) };
        assert_eq!((got.as_slice(), rate_hz), (&samples[..], 24_000));

        // μ-law: one byte per sample at 8 kHz.
        let event = client(serde_json::json!({"type": "input_audio_buffer.append", "audio": b64(&[0xFF, 0x00])}));
        let Command::Audio { samples, rate_hz } = command(event, AudioFormat::Pcmu).unwrap().command else { panic!() };
        assert_eq!((samples, rate_hz), (vec![crate::audio::ulaw_decode(0xFF), crate::audio::ulaw_decode(0x00)], 8_000));

        // Bad base64 and an odd PCM length are errors that name the audio and keep the event id.
        let event = client(serde_json::json!({"type": "input_audio_buffer.append", "event_id": "e2", "audio": "%%%"}));
        let error = command(event, AudioFormat::REALTIME_PCM).unwrap_err();
        assert_eq!(
            (error.code.as_deref(), error.param.as_deref(), error.event_id.as_deref()),
            (Some("invalid_audio"), Some("audio"), Some("e2"))
        );
        let event = client(serde_json::json!({"type": "input_audio_buffer.append", "audio": b64(&[1, 2, 3])}));
        let error = command(event, AudioFormat::REALTIME_PCM).unwrap_err();
        assert!(error.message.ends_with("(session input format is audio/pcm)"), "{}", error.message);
    }

    #[test]
    fn session_updates_become_typed_settings_and_wire_level_refusals_name_the_path() {
        let event = client(serde_json::json!({"type": "session.update", "session": {
            "type": "realtime", "model": "voice", "output_modalities": ["text"], "max_output_tokens": "inf",
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad", "threshold": 0.7}},
                      "output": {"voice": {"id": "v_1"}}},
            "tool_choice": {"type": "function", "name": "weather"}
        }}));
        let Command::Configure { update, .. } = command(event, AudioFormat::REALTIME_PCM).unwrap().command else { panic!() };
        assert_eq!(update.model.as_deref(), Some("voice"));
        assert_eq!(update.audio_out, Some(false));
        assert_eq!(update.input_format, Some(AudioFormat::Pcmu));
        assert_eq!(update.turn, Some(Some(TurnUpdate { threshold: Some(0.7), by_vendor: Some(false), ..TurnUpdate::default() })));
        assert_eq!(update.voice, Some(Voice::Id("v_1".into())));
        assert_eq!(update.tool_choice, Some(ToolChoice::Function("weather".into())));
        assert_eq!(update.max_output_tokens, Some(None));

        let refused = |session: serde_json::Value| {
            let event = client(serde_json::json!({"type": "session.update", "event_id": "u1", "session": session}));
            let error = command(event, AudioFormat::REALTIME_PCM).unwrap_err();
            assert_eq!(error.event_id.as_deref(), Some("u1"));
            (error.code.unwrap(), error.param.unwrap())
        };
        assert_eq!(refused(serde_json::json!({"type": "transcription"})), ("invalid_value".into(), "session.type".into()));
        assert_eq!(refused(serde_json::json!({"output_modalities": ["audio", "text"]})).1, "session.output_modalities");
        assert_eq!(
            refused(serde_json::json!({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}})).1,
            "session.audio.input.turn_detection.type"
        );
        let event =
            client(serde_json::json!({"type": "conversation.item.truncate", "item_id": "i", "content_index": 1, "audio_end_ms": 5}));
        assert_eq!(command(event, AudioFormat::REALTIME_PCM).unwrap_err().param.as_deref(), Some("content_index"));
        let event = client(serde_json::json!({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "AAAA"}]}}));
        assert_eq!(command(event, AudioFormat::REALTIME_PCM).unwrap_err().code.as_deref(), Some("unsupported_content"));
    }

    #[test]
    fn transcript_rendering_rides_in_the_voxgate_extension() {
        let update = |session: serde_json::Value| {
            let event = client(serde_json::json!({"type": "session.update", "event_id": "u2", "session": session}));
            command(event, AudioFormat::REALTIME_PCM).map(|inbound| match inbound.command {
                Command::Configure { update, .. } => update.transcript_rendering,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(
            update(serde_json::json!({"voxgate": {"transcript_rendering": "detailed"}})).unwrap(),
            Some(TranscriptRendering::Detailed)
        );
        assert_eq!(update(serde_json::json!({"voxgate": {"transcript_rendering": "text"}})).unwrap(), Some(TranscriptRendering::Text));
        assert_eq!(update(serde_json::json!({"voxgate": {}})).unwrap(), None);
        assert_eq!(update(serde_json::json!({"instructions": "Hi"})).unwrap(), None);
        let error = update(serde_json::json!({"voxgate": {"transcript_rendering": "verbose"}})).unwrap_err();
        assert_eq!(
            (error.code.as_deref(), error.param.as_deref(), error.event_id.as_deref()),
            (Some("invalid_value"), Some("session.voxgate.transcript_rendering"), Some("u2"))
        );
        assert!(error.message.contains("\"verbose\""), "{}", error.message);

        // Echoed under the same extension, and left out at the default.
        let mut s = settings(AudioFormat::REALTIME_PCM);
        let echoed = |s: &Settings| serde_json::to_value(session_object("sess_1", s)).unwrap().get("voxgate").cloned();
        assert_eq!(echoed(&s), None);
        s.transcript_rendering = TranscriptRendering::Speaker;
        assert_eq!(echoed(&s), Some(serde_json::json!({"transcript_rendering": "speaker"})));
    }

    #[test]
    fn session_errors_get_realtime_codes_and_parameter_paths() {
        let error = SessionError::new(ErrorKind::InvalidValue, "threshold 2 is outside 0.0 to 1.0").concerning(Setting::TurnThreshold);
        let wire = realtime_error(SessionError { reply_to: Some("e9".into()), ..error });
        assert_eq!(wire.error_type, "invalid_request_error");
        assert_eq!(wire.param.as_deref(), Some("session.audio.input.turn_detection.threshold"));
        assert_eq!(wire.event_id.as_deref(), Some("e9"));
        let limited = realtime_error(SessionError::new(ErrorKind::RateLimited { limit: "tokens" }, "over"));
        assert_eq!((limited.error_type.as_str(), limited.code.as_deref(), limited.param), ("tokens", Some("rate_limit_exceeded"), None));
    }

    fn settings(output_format: AudioFormat) -> Settings {
        Settings {
            model: "voice".into(),
            instructions: None,
            audio_out: true,
            input_format: AudioFormat::REALTIME_PCM,
            output_format,
            turn: Some(Turn::default()),
            voice: Some(Voice::Name("fake".into())),
            tools: vec![],
            tool_choice: None,
            max_output_tokens: Some(64),
            transcription: None,
            transcript_rendering: Default::default(),
        }
    }

    fn message(id: &str, status: ItemStatus, transcript: &str) -> Item {
        Item::Message(MessageItem {
            id: Some(id.into()),
            status: Some(status),
            role: Role::Assistant,
            content: vec![Content::OutputAudio { transcript: Some(transcript.into()) }],
        })
    }

    #[test]
    fn a_spoken_response_projects_onto_the_realtime_event_sequence() {
        let mut p = Projection::default();
        let mut out = Vec::new();
        let settings = Box::new(settings(AudioFormat::Pcmu));
        p.events(Event::Settings { session_id: "sess_1".into(), settings, created: true }, |e| out.push(e));
        let ServerEvent::SessionCreated { session, .. } = &out[0] else { panic!("{out:?}") };
        assert_eq!(session.max_output_tokens, Some(MaxOutputTokens::Limit(64)));
        assert_eq!(session.audio.as_ref().unwrap().output.as_ref().unwrap().format.as_ref().unwrap().format_type, "audio/pcmu");

        let call = Item::FunctionCall(FunctionCallItem {
            id: Some("item_call".into()),
            status: Some(ItemStatus::InProgress),
            call_id: Some("call_1".into()),
            name: "weather".into(),
            arguments: String::new(),
        });
        let steps = vec![
            Event::ResponseStarted { response_id: "resp_1".into(), audio: true, metadata: None },
            Event::OutputItemAdded { response_id: "resp_1".into(), item: call, conversation: None },
            Event::OutputItemAdded {
                response_id: "resp_1".into(),
                item: message("item_msg", ItemStatus::InProgress, ""),
                conversation: Some(Joined { previous_item_id: Some("item_user".into()) }),
            },
            Event::SpokenText { response_id: "resp_1".into(), item_id: "item_msg".into(), delta: "Hi.".into() },
            Event::Audio {
                response_id: "resp_1".into(),
                item_id: "item_msg".into(),
                samples: vec![0, 1000, -1000],
                format: AudioFormat::Pcmu,
            },
            Event::OutputItemDone { response_id: "resp_1".into(), item: message("item_msg", ItemStatus::Incomplete, "Hi.") },
        ];
        out.clear();
        for step in steps {
            p.events(step, |e| out.push(e));
        }
        let types: Vec<&str> = out.iter().map(ServerEvent::event_type).collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.output_item.added",
                "response.output_item.added",
                "conversation.item.added",
                "response.content_part.added",
                "response.output_audio_transcript.delta",
                "response.output_audio.delta",
                "response.output_audio.done",
                "response.output_audio_transcript.done",
                "response.content_part.done",
                "response.output_item.done",
            ]
        );
        // The message is the response's second output; its audio is μ-law, as the session asked.
        let ServerEvent::ResponseOutputAudioDelta { output_index, delta, .. } = &out[6] else { panic!() };
        assert_eq!(*output_index, 1);
        let ulaw: Vec<u8> = [0i16, 1000, -1000].iter().map(|&s| crate::audio::ulaw_encode(s)).collect();
        assert_eq!(delta, &b64(&ulaw));
        let ServerEvent::ResponseOutputAudioTranscriptDone { transcript, output_index, .. } = &out[8] else { panic!() };
        assert_eq!((transcript.as_str(), *output_index), ("Hi.", 1));

        out.clear();
        let summary = ResponseSummary {
            id: "resp_1".into(),
            status: ResponseStatus::Cancelled(CancelReason::TurnDetected),
            output: vec![message("item_msg", ItemStatus::Incomplete, "Hi.")],
            audio: true,
            usage: None,
            metadata: None,
            model: Some("echo".into()),
            tts_engine: None,
            latencies: Latencies { llm_ttft: Some(12.5), ..Latencies::default() },
            meter: Some(MeterReading { billed_seconds: 3, amount: crate::metering::amount(3, 4_500_000) }),
        };
        p.events(Event::ResponseDone(Box::new(summary)), |e| out.push(e));
        let ServerEvent::ResponseDone { response, .. } = &out[0] else { panic!() };
        assert_eq!(response.status, WireResponseStatus::Cancelled);
        assert_eq!(response.status_details.as_ref().unwrap().reason, Some(StatusReason::TurnDetected));
        assert_eq!(response.usage, Some(WireUsage::default()));
        let voxgate = response.voxgate.as_ref().unwrap();
        assert_eq!((voxgate.model.as_deref(), voxgate.latency_ms.llm_ttft), (Some("echo"), Some(12.5)));
        assert_eq!(voxgate.meter.as_ref().unwrap().amount_usd, "0.003750000000");
        // Audio after the response is done (still playing) keeps its item but no longer has an index.
        out.clear();
        p.events(
            Event::Audio { response_id: "resp_1".into(), item_id: "item_msg".into(), samples: vec![0], format: AudioFormat::Pcmu },
            |e| out.push(e),
        );
        let ServerEvent::ResponseOutputAudioDelta { output_index, .. } = &out[0] else { panic!() };
        assert_eq!(*output_index, 0);
    }

    #[test]
    fn items_keep_their_shape_both_ways_except_audio() {
        let wire = WireItem::Message(WireMessage {
            id: Some("item_1".into()),
            status: Some(WireStatus::Completed),
            role: WireRole::Assistant,
            content: vec![ContentPart::OutputAudio { audio: Some("AAAA".into()), transcript: Some("hello".into()) }],
        });
        let back = item_to_wire(&item_from_wire(wire.clone()));
        let WireItem::Message(m) = back else { panic!() };
        assert_eq!(m.content, vec![ContentPart::OutputAudio { audio: None, transcript: Some("hello".into()) }]);
        let output = WireItem::FunctionCallOutput(WireOutput { id: None, status: None, call_id: "call_1".into(), output: "42".into() });
        assert_eq!(item_to_wire(&item_from_wire(output.clone())), output);
    }
}
