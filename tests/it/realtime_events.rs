//! The Realtime API event types against JSON written as the official `openai` SDK sends and reads it
//! (GA names and nesting from `openai/types/realtime/`): every client event parses, every server event
//! serialises to the exact expected JSON (and reads back), extensions appear only when set, and each
//! class of bad input gives the right error kind, parameter and `event_id`.

use serde_json::{json, Value};
use voxgate::audio::AudioFormat;
use voxgate::transport::realtime::*;

fn parse(value: Value) -> ClientEvent {
    let text = value.to_string();
    match parse_client_event(&text) {
        Ok(event) => event,
        Err(e) => panic!("{text} did not parse: {e}"),
    }
}

fn session_of(event: ClientEvent) -> Session {
    match event {
        ClientEvent::SessionUpdate(update) => update.session,
        other => panic!("not a session.update: {other:?}"),
    }
}

fn parse_err(text: &str) -> EventError {
    match parse_client_event(text) {
        Ok(event) => panic!("{text} parsed as {event:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------------
// Client events
// ---------------------------------------------------------------------------------------------------

#[test]
fn session_update_reads_the_ga_session_shape() {
    let event = parse(json!({
        "type": "session.update",
        "event_id": "evt_su1",
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Be brief.",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "noise_reduction": {"type": "near_field"},
                    "transcription": {"model": "whisper-1", "language": "en"},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.6,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                        "create_response": true,
                        "interrupt_response": false
                    }
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}
            },
            "tools": [{
                "type": "function",
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
            }],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": "auto",
            "truncation": "auto",
            "include": ["item.input_audio_transcription.logprobs"]
        }
    }));
    let expected = Session {
        session_type: Some(SessionType::Realtime),
        model: Some("gpt-realtime".into()),
        instructions: Some("Be brief.".into()),
        output_modalities: Some(vec![Modality::Audio]),
        audio: Some(SessionAudio {
            input: Some(AudioInput {
                format: Some(AudioFormatSpec { format_type: "audio/pcm".into(), rate: Some(24000) }),
                turn_detection: Some(Some(TurnDetection::ServerVad(ServerVad {
                    threshold: Some(0.6),
                    prefix_padding_ms: Some(300),
                    silence_duration_ms: Some(500),
                    create_response: Some(true),
                    interrupt_response: Some(false),
                    idle_timeout_ms: None,
                }))),
                transcription: Some(Some(InputTranscription {
                    model: Some("whisper-1".into()),
                    language: Some("en".into()),
                    prompt: None,
                })),
            }),
            output: Some(AudioOutput {
                format: Some(AudioFormatSpec { format_type: "audio/pcmu".into(), rate: None }),
                voice: Some(Voice::Name("marin".into())),
                speed: None,
            }),
        }),
        tools: Some(vec![FunctionTool {
            tool_type: FunctionType::Function,
            name: "get_weather".into(),
            description: Some("Weather for a city".into()),
            parameters: Some(json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})),
        }]),
        tool_choice: Some(ToolChoice::Mode(ToolChoiceMode::Auto)),
        max_output_tokens: Some(MaxOutputTokens::Inf),
        ..Session::default()
    };
    assert_eq!(event, ClientEvent::SessionUpdate(Box::new(SessionUpdate { event_id: Some("evt_su1".into()), session: expected })));
    assert_eq!(event.event_type(), "session.update");
    assert_eq!(event.event_id(), Some("evt_su1"));

    let ClientEvent::SessionUpdate(update) = event else { unreachable!() };
    let input = update.session.audio.unwrap().input.unwrap();
    assert_eq!(input.format.unwrap().to_audio_format(), Ok(AudioFormat::REALTIME_PCM));
}

#[test]
fn session_update_tells_null_turn_detection_from_absent() {
    let manual = parse(json!({
        "type": "session.update",
        "session": {"type": "realtime", "audio": {"input": {"turn_detection": null, "transcription": null}}}
    }));
    assert_eq!(manual.event_id(), None);
    let session = session_of(manual);
    let input = session.audio.unwrap().input.unwrap();
    assert_eq!(input.turn_detection, Some(None), "null turns turn detection off");
    assert_eq!(input.transcription, Some(None), "null turns transcription off");

    let unchanged = parse(json!({"type": "session.update", "session": {"type": "realtime", "instructions": "Hi"}}));
    let session = session_of(unchanged);
    assert_eq!(session.audio, None);
    assert_eq!(session.instructions.as_deref(), Some("Hi"));

    // The minimal form leaves every setting unchanged; unknown session fields are tolerated.
    let minimal = parse(json!({"type": "session.update", "session": {"type": "realtime", "prompt": {"id": "pmpt_1"}, "future": [1]}}));
    assert_eq!(
        minimal,
        ClientEvent::SessionUpdate(Box::new(SessionUpdate {
            event_id: None,
            session: Session { session_type: Some(SessionType::Realtime), ..Session::default() }
        }))
    );
}

#[test]
fn session_update_reads_the_other_shapes_of_its_fields() {
    let event = parse(json!({
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["text"],
            "audio": {
                "input": {"format": {"type": "audio/pcma"}, "turn_detection": {"type": "semantic_vad", "eagerness": "low"}},
                "output": {"voice": {"id": "voice_123"}, "speed": 1.25}
            },
            "tool_choice": {"type": "function", "name": "get_weather"},
            "max_output_tokens": 4096
        }
    }));
    let session = session_of(event);
    assert_eq!(session.output_modalities, Some(vec![Modality::Text]));
    assert_eq!(session.tool_choice, Some(ToolChoice::Function { tool_type: FunctionType::Function, name: "get_weather".into() }));
    assert_eq!(session.max_output_tokens, Some(MaxOutputTokens::Limit(4096)));
    let audio = session.audio.unwrap();
    let input = audio.input.unwrap();
    assert_eq!(input.format.unwrap().to_audio_format(), Ok(AudioFormat::Pcma));
    assert_eq!(
        input.turn_detection,
        Some(Some(TurnDetection::SemanticVad(SemanticVad { eagerness: Some("low".into()), ..SemanticVad::default() })))
    );
    let output = audio.output.unwrap();
    assert_eq!(output.voice, Some(Voice::Id { id: "voice_123".into() }));
    assert_eq!(output.speed, Some(1.25));
}

#[test]
fn input_audio_buffer_events_parse() {
    assert_eq!(
        parse(json!({"type": "input_audio_buffer.append", "event_id": "evt_a", "audio": "AAECAw=="})),
        ClientEvent::InputAudioBufferAppend(InputAudioBufferAppend { event_id: Some("evt_a".into()), audio: "AAECAw==".into() })
    );
    assert_eq!(
        parse(json!({"type": "input_audio_buffer.commit", "event_id": "evt_c"})),
        ClientEvent::InputAudioBufferCommit(BareEvent { event_id: Some("evt_c".into()) })
    );
    assert_eq!(parse(json!({"type": "input_audio_buffer.clear"})), ClientEvent::InputAudioBufferClear(BareEvent { event_id: None }));
    assert_eq!(
        parse(json!({"type": "output_audio_buffer.clear", "event_id": "evt_o"})),
        ClientEvent::OutputAudioBufferClear(BareEvent { event_id: Some("evt_o".into()) })
    );
}

#[test]
fn conversation_item_create_reads_every_item_kind() {
    let user = parse(json!({
        "type": "conversation.item.create",
        "event_id": "evt_ic",
        "previous_item_id": "root",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Hello"}, {"type": "input_audio", "audio": "AAAA"}]
        }
    }));
    assert_eq!(
        user,
        ClientEvent::ConversationItemCreate(ConversationItemCreate {
            event_id: Some("evt_ic".into()),
            previous_item_id: Some("root".into()),
            item: Item::Message(MessageItem {
                id: None,
                status: None,
                role: Role::User,
                content: vec![
                    ContentPart::InputText { text: "Hello".into() },
                    ContentPart::InputAudio { audio: Some("AAAA".into()), transcript: None },
                ],
            }),
        })
    );

    let item_of = |item: Value| match parse(json!({"type": "conversation.item.create", "item": item})) {
        ClientEvent::ConversationItemCreate(ConversationItemCreate { item, previous_item_id: None, event_id: None }) => item,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        item_of(json!({"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be kind."}]})),
        Item::Message(MessageItem {
            id: None,
            status: None,
            role: Role::System,
            content: vec![ContentPart::InputText { text: "Be kind.".into() }]
        })
    );
    assert_eq!(
        item_of(json!({
            "id": "item_a1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "Hi there"}]
        })),
        Item::Message(MessageItem {
            id: Some("item_a1".into()),
            status: Some(ItemStatus::Completed),
            role: Role::Assistant,
            content: vec![ContentPart::OutputText { text: "Hi there".into() }]
        })
    );
    assert_eq!(
        item_of(json!({"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"})),
        Item::FunctionCall(FunctionCallItem {
            id: None,
            status: None,
            call_id: Some("call_1".into()),
            name: "get_weather".into(),
            arguments: "{\"city\":\"Oslo\"}".into()
        })
    );
    let output = item_of(json!({"type": "function_call_output", "call_id": "call_1", "output": "{\"temp_c\":4}"}));
    assert_eq!(
        output,
        Item::FunctionCallOutput(FunctionCallOutputItem {
            id: None,
            status: None,
            call_id: "call_1".into(),
            output: "{\"temp_c\":4}".into()
        })
    );
    assert_eq!(output.id(), None);
}

#[test]
fn conversation_item_truncate_retrieve_and_delete_parse() {
    assert_eq!(
        parse(
            json!({"type": "conversation.item.truncate", "event_id": "evt_t", "item_id": "item_9", "content_index": 0, "audio_end_ms": 1500})
        ),
        ClientEvent::ConversationItemTruncate(ConversationItemTruncate {
            event_id: Some("evt_t".into()),
            item_id: "item_9".into(),
            content_index: 0,
            audio_end_ms: 1500
        })
    );
    assert_eq!(
        parse(json!({"type": "conversation.item.delete", "event_id": "evt_d", "item_id": "item_9"})),
        ClientEvent::ConversationItemDelete(ItemIdEvent { event_id: Some("evt_d".into()), item_id: "item_9".into() })
    );
    assert_eq!(
        parse(json!({"type": "conversation.item.retrieve", "item_id": "item_9"})),
        ClientEvent::ConversationItemRetrieve(ItemIdEvent { event_id: None, item_id: "item_9".into() })
    );
}

#[test]
fn response_create_and_cancel_parse() {
    assert_eq!(
        parse(json!({"type": "response.create"})),
        ClientEvent::ResponseCreate(Box::new(ResponseCreate { event_id: None, response: None }))
    );
    let event = parse(json!({
        "type": "response.create",
        "event_id": "evt_rc",
        "response": {
            "conversation": "none",
            "instructions": "Summarise.",
            "output_modalities": ["text"],
            "max_output_tokens": 200,
            "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
            "tool_choice": "required",
            "metadata": {"topic": "summary"},
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Recap"}]}],
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}}
        }
    }));
    assert_eq!(
        event,
        ClientEvent::ResponseCreate(Box::new(ResponseCreate {
            event_id: Some("evt_rc".into()),
            response: Some(ResponseParams {
                conversation: Some(ResponseConversation::OutOfBand),
                input: Some(vec![Item::Message(MessageItem {
                    id: None,
                    status: None,
                    role: Role::User,
                    content: vec![ContentPart::InputText { text: "Recap".into() }]
                })]),
                instructions: Some("Summarise.".into()),
                tools: Some(vec![FunctionTool {
                    tool_type: FunctionType::Function,
                    name: "lookup".into(),
                    description: None,
                    parameters: Some(json!({"type": "object"}))
                }]),
                tool_choice: Some(ToolChoice::Mode(ToolChoiceMode::Required)),
                output_modalities: Some(vec![Modality::Text]),
                max_output_tokens: Some(MaxOutputTokens::Limit(200)),
                audio: Some(ResponseAudio {
                    output: Some(ResponseAudioOutput {
                        format: Some(AudioFormatSpec::from(AudioFormat::REALTIME_PCM)),
                        voice: Some(Voice::Name("alloy".into()))
                    })
                }),
                metadata: Some(json!({"topic": "summary"})),
            }),
        }))
    );
    assert_eq!(
        parse(json!({"type": "response.create", "response": {"conversation": "auto"}})),
        ClientEvent::ResponseCreate(Box::new(ResponseCreate {
            event_id: None,
            response: Some(ResponseParams { conversation: Some(ResponseConversation::Auto), ..ResponseParams::default() })
        }))
    );
    assert_eq!(
        parse(json!({"type": "response.cancel", "event_id": "evt_x", "response_id": "resp_1"})),
        ClientEvent::ResponseCancel(ResponseCancel { event_id: Some("evt_x".into()), response_id: Some("resp_1".into()) })
    );
    assert_eq!(parse(json!({"type": "response.cancel"})), ClientEvent::ResponseCancel(ResponseCancel::default()));
}

#[test]
fn client_events_serialise_back_to_what_was_parsed() {
    let inputs = [
        json!({"type": "input_audio_buffer.append", "event_id": "e1", "audio": "AAAA"}),
        json!({"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 10}),
        json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": null}}}}),
        json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "c", "output": "ok"}}),
        json!({"type": "response.create", "response": {"max_output_tokens": "inf", "tool_choice": "none"}}),
    ];
    for input in inputs {
        let event = parse(input.clone());
        assert_eq!(serde_json::to_value(&event).unwrap(), input);
        assert_eq!(event.event_type(), input["type"]);
    }
}

// ---------------------------------------------------------------------------------------------------
// Server events
// ---------------------------------------------------------------------------------------------------

/// Serialises `event`, compares with `expected`, and reads `expected` back into the same event.
fn check(event: ServerEvent, expected: Value) {
    let actual = serde_json::to_value(&event).unwrap();
    assert_eq!(actual, expected, "serialised {}", event.event_type());
    assert_eq!(event.event_type(), expected["type"]);
    let back: ServerEvent = serde_json::from_value(expected).unwrap();
    assert_eq!(back, event);
}

fn user_audio_item() -> (Item, Value) {
    (
        Item::Message(MessageItem {
            id: Some("item_u1".into()),
            status: Some(ItemStatus::Completed),
            role: Role::User,
            content: vec![ContentPart::InputAudio { audio: None, transcript: None }],
        }),
        json!({"id": "item_u1", "type": "message", "status": "completed", "role": "user", "content": [{"type": "input_audio", "transcript": null}]}),
    )
}

fn assistant_item(status: ItemStatus, transcript: &str) -> (Item, Value) {
    let status_name = serde_json::to_value(status).unwrap();
    (
        Item::Message(MessageItem {
            id: Some("item_a1".into()),
            status: Some(status),
            role: Role::Assistant,
            content: vec![ContentPart::OutputAudio { audio: None, transcript: Some(transcript.into()) }],
        }),
        json!({
            "id": "item_a1", "type": "message", "status": status_name, "role": "assistant",
            "content": [{"type": "output_audio", "transcript": transcript}]
        }),
    )
}

fn function_call_item() -> (Item, Value) {
    (
        Item::FunctionCall(FunctionCallItem {
            id: Some("item_f1".into()),
            status: Some(ItemStatus::Completed),
            call_id: Some("call_1".into()),
            name: "get_weather".into(),
            arguments: "{\"city\":\"Oslo\"}".into(),
        }),
        json!({
            "id": "item_f1", "type": "function_call", "status": "completed", "call_id": "call_1",
            "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"
        }),
    )
}

fn served_session() -> (Session, Value) {
    let session = Session {
        session_type: Some(SessionType::Realtime),
        id: Some("sess_1".into()),
        object: Some("realtime.session".into()),
        model: Some("voice-default".into()),
        expires_at: Some(1_800_000_000),
        instructions: Some("Be brief.".into()),
        output_modalities: Some(vec![Modality::Audio]),
        audio: Some(SessionAudio {
            input: Some(AudioInput {
                format: Some(AudioFormat::REALTIME_PCM.into()),
                turn_detection: Some(Some(TurnDetection::ServerVad(ServerVad {
                    threshold: Some(0.5),
                    prefix_padding_ms: Some(300),
                    silence_duration_ms: Some(500),
                    create_response: Some(true),
                    interrupt_response: Some(true),
                    idle_timeout_ms: None,
                }))),
                transcription: Some(None),
            }),
            output: Some(AudioOutput { format: Some(AudioFormat::Pcmu.into()), voice: Some(Voice::Name("joe".into())), speed: None }),
        }),
        tools: Some(vec![]),
        tool_choice: Some(ToolChoice::Mode(ToolChoiceMode::Auto)),
        max_output_tokens: Some(MaxOutputTokens::Inf),
        voxgate: None,
    };
    let json = json!({
        "type": "realtime",
        "id": "sess_1",
        "object": "realtime.session",
        "model": "voice-default",
        "expires_at": 1_800_000_000u64,
        "instructions": "Be brief.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "turn_detection": {
                    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
                    "create_response": true, "interrupt_response": true
                },
                "transcription": null
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "joe"}
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf"
    });
    (session, json)
}

#[test]
fn error_event_serialises() {
    check(
        ServerEvent::Error {
            event_id: "event_1".into(),
            error: RealtimeError {
                error_type: "invalid_request_error".into(),
                code: Some("invalid_value".into()),
                message: "Invalid value: 'text'.".into(),
                param: Some("item.type".into()),
                event_id: Some("evt_client".into()),
            },
        },
        json!({
            "type": "error", "event_id": "event_1",
            "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "Invalid value: 'text'.", "param": "item.type", "event_id": "evt_client"}
        }),
    );
    check(
        ServerEvent::Error { event_id: "event_2".into(), error: RealtimeError::server("stt_unavailable", "speech recognition failed") },
        json!({
            "type": "error", "event_id": "event_2",
            "error": {"type": "server_error", "code": "stt_unavailable", "message": "speech recognition failed", "param": null, "event_id": null}
        }),
    );
}

#[test]
fn session_events_serialise() {
    let (session, session_json) = served_session();
    check(
        ServerEvent::SessionCreated { event_id: "event_s1".into(), session: session.clone() },
        json!({"type": "session.created", "event_id": "event_s1", "session": session_json.clone()}),
    );
    check(
        ServerEvent::SessionUpdated { event_id: "event_s2".into(), session },
        json!({"type": "session.updated", "event_id": "event_s2", "session": session_json}),
    );
}

#[test]
fn input_audio_buffer_events_serialise() {
    check(
        ServerEvent::InputAudioBufferSpeechStarted { event_id: "event_1".into(), audio_start_ms: 11956, item_id: "item_u1".into() },
        json!({"type": "input_audio_buffer.speech_started", "event_id": "event_1", "audio_start_ms": 11956, "item_id": "item_u1"}),
    );
    check(
        ServerEvent::InputAudioBufferSpeechStopped { event_id: "event_2".into(), audio_end_ms: 14720, item_id: "item_u1".into() },
        json!({"type": "input_audio_buffer.speech_stopped", "event_id": "event_2", "audio_end_ms": 14720, "item_id": "item_u1"}),
    );
    check(
        ServerEvent::InputAudioBufferCommitted { event_id: "event_3".into(), previous_item_id: None, item_id: "item_u1".into() },
        json!({"type": "input_audio_buffer.committed", "event_id": "event_3", "previous_item_id": null, "item_id": "item_u1"}),
    );
    check(
        ServerEvent::InputAudioBufferCommitted {
            event_id: "event_4".into(),
            previous_item_id: Some("item_a0".into()),
            item_id: "item_u2".into(),
        },
        json!({"type": "input_audio_buffer.committed", "event_id": "event_4", "previous_item_id": "item_a0", "item_id": "item_u2"}),
    );
    check(
        ServerEvent::InputAudioBufferCleared { event_id: "event_5".into() },
        json!({"type": "input_audio_buffer.cleared", "event_id": "event_5"}),
    );
}

#[test]
fn conversation_item_events_serialise() {
    let (user, user_json) = user_audio_item();
    check(
        ServerEvent::ConversationItemAdded { event_id: "event_1".into(), previous_item_id: None, item: user.clone() },
        json!({"type": "conversation.item.added", "event_id": "event_1", "previous_item_id": null, "item": user_json.clone()}),
    );
    check(
        ServerEvent::ConversationItemDone { event_id: "event_2".into(), previous_item_id: Some("item_0".into()), item: user.clone() },
        json!({"type": "conversation.item.done", "event_id": "event_2", "previous_item_id": "item_0", "item": user_json.clone()}),
    );
    check(
        ServerEvent::ConversationItemRetrieved { event_id: "event_3".into(), item: user },
        json!({"type": "conversation.item.retrieved", "event_id": "event_3", "item": user_json}),
    );
    check(
        ServerEvent::ConversationItemTruncated {
            event_id: "event_4".into(),
            item_id: "item_a1".into(),
            content_index: 0,
            audio_end_ms: 1500,
        },
        json!({"type": "conversation.item.truncated", "event_id": "event_4", "item_id": "item_a1", "content_index": 0, "audio_end_ms": 1500}),
    );
    check(
        ServerEvent::ConversationItemDeleted { event_id: "event_5".into(), item_id: "item_a1".into() },
        json!({"type": "conversation.item.deleted", "event_id": "event_5", "item_id": "item_a1"}),
    );
    let (call, call_json) = function_call_item();
    check(
        ServerEvent::ConversationItemAdded { event_id: "event_6".into(), previous_item_id: Some("item_u1".into()), item: call },
        json!({"type": "conversation.item.added", "event_id": "event_6", "previous_item_id": "item_u1", "item": call_json}),
    );
    check(
        ServerEvent::ConversationItemAdded {
            event_id: "event_7".into(),
            previous_item_id: Some("item_f1".into()),
            item: Item::FunctionCallOutput(FunctionCallOutputItem {
                id: Some("item_o1".into()),
                status: Some(ItemStatus::Completed),
                call_id: "call_1".into(),
                output: "sunny".into(),
            }),
        },
        json!({
            "type": "conversation.item.added", "event_id": "event_7", "previous_item_id": "item_f1",
            "item": {"id": "item_o1", "type": "function_call_output", "status": "completed", "call_id": "call_1", "output": "sunny"}
        }),
    );
}

#[test]
fn transcription_events_serialise_with_extensions_only_when_set() {
    check(
        ServerEvent::InputAudioTranscriptionDelta {
            event_id: "event_1".into(),
            item_id: "item_u1".into(),
            content_index: 0,
            delta: "Hello".into(),
            words: None,
            speaker: None,
            engine: None,
        },
        json!({
            "type": "conversation.item.input_audio_transcription.delta", "event_id": "event_1",
            "item_id": "item_u1", "content_index": 0, "delta": "Hello"
        }),
    );
    check(
        ServerEvent::InputAudioTranscriptionDelta {
            event_id: "event_2".into(),
            item_id: "item_u1".into(),
            content_index: 0,
            delta: " world".into(),
            words: Some(vec![Word { text: "world".into(), start_ms: 420, end_ms: 780, confidence: 0.93 }]),
            speaker: Some("A".into()),
            engine: None,
        },
        json!({
            "type": "conversation.item.input_audio_transcription.delta", "event_id": "event_2",
            "item_id": "item_u1", "content_index": 0, "delta": " world",
            "words": [{"text": "world", "start_ms": 420, "end_ms": 780, "confidence": 0.93}],
            "speaker": "A"
        }),
    );
    check(
        ServerEvent::InputAudioTranscriptionCompleted {
            event_id: "event_3".into(),
            item_id: "item_u1".into(),
            content_index: 0,
            transcript: "Hello world".into(),
            usage: TranscriptionUsage::Duration { seconds: 1.5 },
            words: None,
            speaker: None,
            engine: None,
        },
        json!({
            "type": "conversation.item.input_audio_transcription.completed", "event_id": "event_3",
            "item_id": "item_u1", "content_index": 0, "transcript": "Hello world",
            "usage": {"type": "duration", "seconds": 1.5}
        }),
    );
    check(
        ServerEvent::InputAudioTranscriptionCompleted {
            event_id: "event_4".into(),
            item_id: "item_u1".into(),
            content_index: 0,
            transcript: "Hello world".into(),
            usage: TranscriptionUsage::Tokens { input_tokens: 12, output_tokens: 3, total_tokens: 15 },
            words: Some(vec![
                Word { text: "Hello".into(), start_ms: 0, end_ms: 400, confidence: 0.98 },
                Word { text: "world".into(), start_ms: 420, end_ms: 780, confidence: 0.93 },
            ]),
            speaker: Some("spk_0".into()),
            engine: None,
        },
        json!({
            "type": "conversation.item.input_audio_transcription.completed", "event_id": "event_4",
            "item_id": "item_u1", "content_index": 0, "transcript": "Hello world",
            "usage": {"type": "tokens", "input_tokens": 12, "output_tokens": 3, "total_tokens": 15},
            "words": [
                {"text": "Hello", "start_ms": 0, "end_ms": 400, "confidence": 0.98},
                {"text": "world", "start_ms": 420, "end_ms": 780, "confidence": 0.93}
            ],
            "speaker": "spk_0"
        }),
    );
    check(
        ServerEvent::InputAudioTranscriptionFailed {
            event_id: "event_5".into(),
            item_id: "item_u1".into(),
            content_index: 0,
            error: RealtimeError::server("stt_timeout", "no transcript in time"),
        },
        json!({
            "type": "conversation.item.input_audio_transcription.failed", "event_id": "event_5", "item_id": "item_u1", "content_index": 0,
            "error": {"type": "server_error", "code": "stt_timeout", "message": "no transcript in time", "param": null, "event_id": null}
        }),
    );
}

#[test]
fn response_lifecycle_events_serialise() {
    let mut created = Response::in_progress("resp_1");
    created.conversation_id = Some("conv_1".into());
    created.output_modalities = Some(vec![Modality::Audio]);
    created.max_output_tokens = Some(MaxOutputTokens::Inf);
    created.audio = Some(ResponseAudio {
        output: Some(ResponseAudioOutput { format: Some(AudioFormat::REALTIME_PCM.into()), voice: Some(Voice::Name("alloy".into())) }),
    });
    check(
        ServerEvent::ResponseCreated { event_id: "event_1".into(), response: created.clone() },
        json!({
            "type": "response.created", "event_id": "event_1",
            "response": {
                "id": "resp_1", "object": "realtime.response", "status": "in_progress", "status_details": null, "output": [],
                "conversation_id": "conv_1", "output_modalities": ["audio"], "max_output_tokens": "inf",
                "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
                "usage": null, "metadata": null
            }
        }),
    );

    let (item, item_json) = assistant_item(ItemStatus::Completed, "Hi there");
    let mut done = created;
    done.status = ResponseStatus::Completed;
    done.status_details = Some(StatusDetails { status_type: Some(ResponseStatus::Completed), reason: None, error: None });
    done.output = vec![item];
    done.usage = Some(Usage {
        total_tokens: 253,
        input_tokens: 132,
        output_tokens: 121,
        input_token_details: InputTokenDetails {
            cached_tokens: 64,
            text_tokens: 119,
            audio_tokens: 13,
            cached_tokens_details: Some(CachedTokensDetails { text_tokens: 64, audio_tokens: 0 }),
        },
        output_token_details: OutputTokenDetails { text_tokens: 30, audio_tokens: 91 },
    });
    let done_json = json!({
        "id": "resp_1", "object": "realtime.response", "status": "completed", "status_details": {"type": "completed"},
        "output": [item_json], "conversation_id": "conv_1", "output_modalities": ["audio"], "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
        "usage": {
            "total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
            "input_token_details": {
                "cached_tokens": 64, "text_tokens": 119, "audio_tokens": 13,
                "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0}
            },
            "output_token_details": {"text_tokens": 30, "audio_tokens": 91}
        },
        "metadata": null
    });
    check(
        ServerEvent::ResponseDone { event_id: "event_2".into(), response: done.clone() },
        json!({"type": "response.done", "event_id": "event_2", "response": done_json.clone()}),
    );

    // The voxgate extension appears only when set, as an extra field of the response.
    done.voxgate = Some(VoxgateResponseInfo {
        model: Some("groq/llama-3.1-8b-instant".into()),
        tts_engine: Some("cartesia".into()),
        latency_ms: StageLatencies { stt: Some(212.5), llm_ttft: Some(180.0), tts_ttfb: Some(95.25), voice_to_voice: Some(540.0) },
        meter: Some(MeterInfo { billed_seconds: 9, amount_usd: "0.011250000000".into() }),
    });
    let mut extended_json = done_json;
    extended_json["voxgate"] = json!({
        "model": "groq/llama-3.1-8b-instant",
        "tts_engine": "cartesia",
        "latency_ms": {"stt": 212.5, "llm_ttft": 180.0, "tts_ttfb": 95.25, "voice_to_voice": 540.0},
        "meter": {"billed_seconds": 9, "amount_usd": "0.011250000000"}
    });
    check(
        ServerEvent::ResponseDone { event_id: "event_3".into(), response: done.clone() },
        json!({"type": "response.done", "event_id": "event_3", "response": extended_json}),
    );
    // Stages that did not run are left out.
    done.voxgate = Some(VoxgateResponseInfo {
        model: Some("fake/echo".into()),
        tts_engine: None,
        latency_ms: StageLatencies { llm_ttft: Some(1.0), ..Default::default() },
        meter: None,
    });
    let value = serde_json::to_value(ServerEvent::ResponseDone { event_id: "event_4".into(), response: done }).unwrap();
    assert_eq!(value["response"]["voxgate"], json!({"model": "fake/echo", "latency_ms": {"llm_ttft": 1.0}}));

    let mut cancelled = Response::in_progress("resp_2");
    cancelled.status = ResponseStatus::Cancelled;
    cancelled.status_details =
        Some(StatusDetails { status_type: Some(ResponseStatus::Cancelled), reason: Some(StatusReason::TurnDetected), error: None });
    cancelled.usage = Some(Usage::default());
    check(
        ServerEvent::ResponseDone { event_id: "event_5".into(), response: cancelled },
        json!({
            "type": "response.done", "event_id": "event_5",
            "response": {
                "id": "resp_2", "object": "realtime.response", "status": "cancelled",
                "status_details": {"type": "cancelled", "reason": "turn_detected"},
                "output": [],
                "usage": {
                    "total_tokens": 0, "input_tokens": 0, "output_tokens": 0,
                    "input_token_details": {"cached_tokens": 0, "text_tokens": 0, "audio_tokens": 0},
                    "output_token_details": {"text_tokens": 0, "audio_tokens": 0}
                },
                "metadata": null
            }
        }),
    );

    let mut failed = Response::in_progress("resp_3");
    failed.status = ResponseStatus::Failed;
    failed.status_details = Some(StatusDetails {
        status_type: Some(ResponseStatus::Failed),
        reason: None,
        error: Some(StatusError { error_type: Some("server_error".into()), code: Some("all_models_failed".into()), message: None }),
    });
    let value = serde_json::to_value(ServerEvent::ResponseDone { event_id: "event_6".into(), response: failed }).unwrap();
    assert_eq!(value["response"]["status"], "failed");
    assert_eq!(
        value["response"]["status_details"],
        json!({"type": "failed", "error": {"type": "server_error", "code": "all_models_failed"}})
    );
    assert!(value["response"].get("voxgate").is_none());
}

#[test]
fn response_output_events_serialise() {
    let (item, item_json) = assistant_item(ItemStatus::InProgress, "");
    check(
        ServerEvent::ResponseOutputItemAdded { event_id: "event_1".into(), response_id: "resp_1".into(), output_index: 0, item },
        json!({"type": "response.output_item.added", "event_id": "event_1", "response_id": "resp_1", "output_index": 0, "item": item_json}),
    );
    let (item, item_json) = assistant_item(ItemStatus::Completed, "Sure!");
    check(
        ServerEvent::ResponseOutputItemDone { event_id: "event_2".into(), response_id: "resp_1".into(), output_index: 0, item },
        json!({"type": "response.output_item.done", "event_id": "event_2", "response_id": "resp_1", "output_index": 0, "item": item_json}),
    );
    let ids = json!({"response_id": "resp_1", "item_id": "item_a1", "output_index": 0, "content_index": 0});
    let with = |event_type: &str, event_id: &str, extra: Value| {
        let mut v = ids.clone();
        v["type"] = json!(event_type);
        v["event_id"] = json!(event_id);
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    check(
        ServerEvent::ResponseContentPartAdded {
            event_id: "event_3".into(),
            response_id: "resp_1".into(),
            item_id: "item_a1".into(),
            output_index: 0,
            content_index: 0,
            part: ResponsePart::Audio { audio: None, transcript: String::new() },
        },
        with("response.content_part.added", "event_3", json!({"part": {"type": "audio", "transcript": ""}})),
    );
    check(
        ServerEvent::ResponseContentPartDone {
            event_id: "event_4".into(),
            response_id: "resp_1".into(),
            item_id: "item_a1".into(),
            output_index: 0,
            content_index: 0,
            part: ResponsePart::Text { text: "Sure!".into() },
        },
        with("response.content_part.done", "event_4", json!({"part": {"type": "text", "text": "Sure!"}})),
    );
    check(
        ServerEvent::ResponseOutputAudioDelta {
            event_id: "event_5".into(),
            response_id: "resp_1".into(),
            item_id: "item_a1".into(),
            output_index: 0,
            content_index: 0,
            delta: "AAECAw==".into(),
        },
        with("response.output_audio.delta", "event_5", json!({"delta": "AAECAw=="})),
    );
    check(
        ServerEvent::ResponseOutputAudioDone {
            event_id: "event_6".into(),
            response_id: "resp_1".into(),
            item_id: "item_a1".into(),
            output_index: 0,
            content_index: 0,
        },
        with("response.output_audio.done", "event_6", json!({})),
    );
    check(
        ServerEvent::ResponseOutputAudioTranscriptDelta {
            event_id: "event_7".into(),
            response_id: "resp_1".into(),
            item_id: "item_a1".into(),
            output_index: 0,
            content_index: 0,
            delta: "Sure".into(),
        },
        with("response.output_audio_transcript.delta", "event_7", json!({"delta": "Sure"})),
    );
    check(
        ServerEvent::ResponseOutputAudioTranscriptDone {
            event_id: "event_8".into(),
            response_id: "resp_1".into(),
            item_id: "item_a1".into(),
            output_index: 0,
            content_index: 0,
            transcript: "Sure!".into(),
        },
        with("response.output_audio_transcript.done", "event_8", json!({"transcript": "Sure!"})),
    );
    check(
        ServerEvent::ResponseOutputTextDelta {
            event_id: "event_9".into(),
            response_id: "resp_1".into(),
            item_id: "item_a1".into(),
            output_index: 0,
            content_index: 0,
            delta: "Su".into(),
        },
        with("response.output_text.delta", "event_9", json!({"delta": "Su"})),
    );
    check(
        ServerEvent::ResponseOutputTextDone {
            event_id: "event_10".into(),
            response_id: "resp_1".into(),
            item_id: "item_a1".into(),
            output_index: 0,
            content_index: 0,
            text: "Sure!".into(),
        },
        with("response.output_text.done", "event_10", json!({"text": "Sure!"})),
    );
}

#[test]
fn function_call_argument_events_serialise() {
    check(
        ServerEvent::ResponseFunctionCallArgumentsDelta {
            event_id: "event_1".into(),
            response_id: "resp_1".into(),
            item_id: "item_f1".into(),
            output_index: 1,
            call_id: "call_1".into(),
            delta: "{\"ci".into(),
        },
        json!({
            "type": "response.function_call_arguments.delta", "event_id": "event_1", "response_id": "resp_1",
            "item_id": "item_f1", "output_index": 1, "call_id": "call_1", "delta": "{\"ci"
        }),
    );
    check(
        ServerEvent::ResponseFunctionCallArgumentsDone {
            event_id: "event_2".into(),
            response_id: "resp_1".into(),
            item_id: "item_f1".into(),
            output_index: 1,
            call_id: "call_1".into(),
            name: "get_weather".into(),
            arguments: "{\"city\":\"Oslo\"}".into(),
        },
        json!({
            "type": "response.function_call_arguments.done", "event_id": "event_2", "response_id": "resp_1",
            "item_id": "item_f1", "output_index": 1, "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"
        }),
    );
}

#[test]
fn output_audio_buffer_and_rate_limit_events_serialise() {
    check(
        ServerEvent::OutputAudioBufferStarted { event_id: "event_1".into(), response_id: "resp_1".into() },
        json!({"type": "output_audio_buffer.started", "event_id": "event_1", "response_id": "resp_1"}),
    );
    check(
        ServerEvent::OutputAudioBufferStopped { event_id: "event_2".into(), response_id: "resp_1".into() },
        json!({"type": "output_audio_buffer.stopped", "event_id": "event_2", "response_id": "resp_1"}),
    );
    check(
        ServerEvent::OutputAudioBufferCleared { event_id: "event_3".into(), response_id: "resp_1".into() },
        json!({"type": "output_audio_buffer.cleared", "event_id": "event_3", "response_id": "resp_1"}),
    );
    check(
        ServerEvent::RateLimitsUpdated {
            event_id: "event_4".into(),
            rate_limits: vec![RateLimit { name: "tokens".into(), limit: 40000, remaining: 38490, reset_seconds: 2.265 }],
        },
        json!({
            "type": "rate_limits.updated", "event_id": "event_4",
            "rate_limits": [{"name": "tokens", "limit": 40000, "remaining": 38490, "reset_seconds": 2.265}]
        }),
    );
}

// ---------------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------------

#[test]
fn invalid_json_is_reported_as_such() {
    for text in [
        r#"{"type": "input_audio_buffer.commit","#,
        "",
        "   ",
        "not json",
        "[1, 2]",
        "\"session.update\"",
        "null",
        r#"{"type": "x"} trailing"#,
    ] {
        let e = parse_err(text);
        assert_eq!(e.kind(), "invalid_json", "{text:?}: {e}");
        assert_eq!(e.event_id(), None);
        assert_eq!(e.code(), "invalid_json");
    }
}

#[test]
fn unknown_type_names_it_and_keeps_the_event_id() {
    let e = parse_err(r#"{"type": "session.upgrade", "event_id": "evt_u1", "session": {}}"#);
    assert_eq!(e, EventError::UnknownType { event_type: "session.upgrade".into(), event_id: Some("evt_u1".into()) });
    assert_eq!(e.kind(), "unknown_type");
    assert_eq!(e.param(), Some("type"));
    assert!(e.to_string().contains("session.upgrade"), "{e}");
    // Beta names are not GA names.
    let e = parse_err(r#"{"type": "response.audio.delta", "event_id": "evt_u2"}"#);
    assert_eq!(e.kind(), "unknown_type");
    assert_eq!(e.event_id(), Some("evt_u2"));
    // A huge type is not echoed whole.
    let long = "x".repeat(10_000);
    let e = parse_err(&json!({"type": long}).to_string());
    assert!(e.to_string().len() < 1_000, "{}", e.to_string().len());
}

#[test]
fn missing_type_keeps_the_event_id() {
    let e = parse_err(r#"{"event_id": "evt_m1", "audio": "AAAA"}"#);
    assert_eq!(e, EventError::MissingType { event_id: Some("evt_m1".into()) });
    assert_eq!(e.kind(), "missing_type");
    assert_eq!(e.param(), Some("type"));
    for text in [r#"{"type": null, "event_id": "evt_m2"}"#, r#"{"type": 7, "event_id": "evt_m2"}"#] {
        let e = parse_err(text);
        assert_eq!(e, EventError::MissingType { event_id: Some("evt_m2".into()) }, "{text}");
    }
    assert_eq!(parse_err("{}"), EventError::MissingType { event_id: None });
}

#[test]
fn wrong_typed_fields_are_named() {
    let e = parse_err(
        r#"{"type": "conversation.item.truncate", "event_id": "evt_w1", "item_id": "item_1", "content_index": "zero", "audio_end_ms": 1500}"#,
    );
    assert_eq!(e.kind(), "wrong_type", "{e}");
    assert_eq!(e.param(), Some("content_index"));
    assert_eq!(e.event_id(), Some("evt_w1"));
    assert_eq!(e.code(), "invalid_type");

    let e = parse_err(r#"{"type": "input_audio_buffer.append", "event_id": "evt_w2", "audio": 12345}"#);
    assert_eq!((e.kind(), e.param(), e.event_id()), ("wrong_type", Some("audio"), Some("evt_w2")), "{e}");

    // Deep inside the session, behind a tagged union, over several lines.
    let text = "{\n  \"type\": \"session.update\",\n  \"event_id\": \"evt_w3\",\n  \"session\": {\"type\": \"realtime\", \"audio\": {\"input\": {\n    \"turn_detection\": {\"type\": \"server_vad\", \"threshold\": \"high\"}}}}\n}";
    let e = parse_err(text);
    assert_eq!(e.kind(), "wrong_type", "{e}");
    assert_eq!(e.param(), Some("session.audio.input.turn_detection.threshold"));
    assert_eq!(e.event_id(), Some("evt_w3"));

    // Inside a message's content parts, with a field after the item.
    let e = parse_err(
        r#"{"type": "conversation.item.create", "event_id": "evt_w4", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": 42}]}, "previous_item_id": "root"}"#,
    );
    assert_eq!((e.kind(), e.param(), e.event_id()), ("wrong_type", Some("item.content[0].text"), Some("evt_w4")), "{e}");

    // A struct where a list belongs.
    let e = parse_err(r#"{"type": "session.update", "event_id": "evt_w5", "session": {"tools": {"name": "x"}}}"#);
    assert_eq!((e.kind(), e.param(), e.event_id()), ("wrong_type", Some("session.tools"), Some("evt_w5")), "{e}");

    // The event_id itself of the wrong type: it cannot be returned, but the error says where.
    let e = parse_err(r#"{"type": "input_audio_buffer.commit", "event_id": 99}"#);
    assert_eq!((e.kind(), e.param(), e.event_id()), ("wrong_type", Some("event_id"), None), "{e}");
}

#[test]
fn missing_required_fields_are_named() {
    let e = parse_err(r#"{"type": "conversation.item.truncate", "event_id": "evt_r1", "item_id": "item_1", "content_index": 0}"#);
    assert_eq!(
        e,
        EventError::MissingField {
            event_type: "conversation.item.truncate",
            param: "audio_end_ms".into(),
            event_id: Some("evt_r1".into())
        }
    );
    assert_eq!(e.code(), "missing_required_parameter");

    let e = parse_err(r#"{"type": "input_audio_buffer.append", "event_id": "evt_r2"}"#);
    assert_eq!((e.kind(), e.param(), e.event_id()), ("missing_field", Some("audio"), Some("evt_r2")));

    let e = parse_err(r#"{"type": "session.update", "event_id": "evt_r3"}"#);
    assert_eq!((e.kind(), e.param()), ("missing_field", Some("session")));

    let e = parse_err(
        r#"{"type": "conversation.item.create", "event_id": "evt_r4", "item": {"type": "function_call_output", "output": "ok"}}"#,
    );
    assert_eq!((e.kind(), e.param(), e.event_id()), ("missing_field", Some("item.call_id"), Some("evt_r4")), "{e}");

    let e = parse_err(
        r#"{"type": "conversation.item.create", "event_id": "evt_r5", "item": {"type": "message", "role": "user", "content": [{"type": "input_text"}]}}"#,
    );
    assert_eq!((e.kind(), e.param()), ("missing_field", Some("item.content[0].text")), "{e}");

    let e = parse_err(r#"{"type": "conversation.item.create", "event_id": "evt_r6", "item": {"role": "user", "content": []}}"#);
    assert_eq!((e.kind(), e.param()), ("missing_field", Some("item.type")), "{e}");
}

#[test]
fn invalid_values_are_named() {
    let e = parse_err(r#"{"type": "session.update", "event_id": "evt_v1", "session": {"output_modalities": ["video"]}}"#);
    assert_eq!((e.kind(), e.param(), e.event_id()), ("invalid_value", Some("session.output_modalities[0]"), Some("evt_v1")), "{e}");
    assert_eq!(e.code(), "invalid_value");

    let e = parse_err(
        r#"{"type": "session.update", "event_id": "evt_v2", "session": {"audio": {"input": {"turn_detection": {"type": "magic_vad"}}}}}"#,
    );
    assert_eq!((e.kind(), e.param()), ("invalid_value", Some("session.audio.input.turn_detection.type")), "{e}");

    let e = parse_err(
        r#"{"type": "conversation.item.create", "event_id": "evt_v3", "item": {"type": "message", "role": "bot", "content": []}}"#,
    );
    assert_eq!((e.kind(), e.param()), ("invalid_value", Some("item.role")), "{e}");

    let e = parse_err(
        r#"{"type": "conversation.item.truncate", "event_id": "evt_v4", "item_id": "i", "content_index": 0, "audio_end_ms": -5}"#,
    );
    assert_eq!((e.kind(), e.param()), ("invalid_value", Some("audio_end_ms")), "{e}");

    let e = parse_err(r#"{"type": "session.update", "event_id": "evt_v5", "session": {"max_output_tokens": "lots"}}"#);
    assert_eq!((e.kind(), e.param()), ("invalid_value", Some("session.max_output_tokens")), "{e}");

    let e = parse_err(r#"{"type": "session.update", "session": {"tools": [{"type": "mcp", "server_label": "x"}]}}"#);
    assert_eq!((e.kind(), e.param(), e.event_id()), ("invalid_value", Some("session.tools[0].type"), None), "{e}");
}

#[test]
fn errors_become_realtime_error_events() {
    let e = parse_err(
        r#"{"type": "conversation.item.truncate", "event_id": "evt_e1", "item_id": "item_1", "content_index": "0", "audio_end_ms": 1}"#,
    );
    let event = serde_json::to_value(e.to_server_event()).unwrap();
    assert_eq!(event["type"], "error");
    assert!(event["event_id"].as_str().unwrap().starts_with("event_"), "{event}");
    assert_eq!(event["error"]["type"], "invalid_request_error");
    assert_eq!(event["error"]["code"], "invalid_type");
    assert_eq!(event["error"]["param"], "content_index");
    assert_eq!(event["error"]["event_id"], "evt_e1");
    assert!(event["error"]["message"].as_str().unwrap().contains("content_index"), "{event}");

    let event = serde_json::to_value(parse_err("{").to_server_event()).unwrap();
    assert_eq!(event["error"]["code"], "invalid_json");
    assert_eq!(event["error"]["event_id"], Value::Null);
    assert_eq!(event["error"]["param"], Value::Null);
}

#[test]
fn parsing_never_panics_on_cut_or_mangled_events() {
    let events = [
        r#"{"type":"session.update","event_id":"e","session":{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcm","rate":24000},"turn_detection":{"type":"server_vad","threshold":0.5}}},"tools":[{"type":"function","name":"f","parameters":{"type":"object"}}]}}"#,
        r#"{"type":"conversation.item.create","event_id":"é","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"héllo \"q\" \\ \u00e9"}]}}"#,
        r#"{"type":"conversation.item.truncate","item_id":"i","content_index":0,"audio_end_ms":1}"#,
    ];
    let mangles: [fn(&str) -> String; 4] =
        [|s| s.replace(':', ":["), |s| s.replace('"', "'"), |s| s.replace("0", "\"0\""), |s| s.replace('}', "},")];
    let mut parsed = 0;
    for event in events {
        for (i, _) in event.char_indices() {
            parsed += parse_client_event(&event[..i]).is_ok() as usize;
        }
        for mangle in mangles {
            let _ = parse_client_event(&mangle(event));
        }
        assert!(parse_client_event(event).is_ok(), "{event}");
    }
    assert_eq!(parsed, 0, "no strict prefix of an event is an event");
}

#[test]
fn ids_are_prefixed_and_unique() {
    let a = new_event_id();
    let b = new_event_id();
    assert!(a.starts_with("event_") && a.len() > "event_".len());
    assert_ne!(a, b);
    assert!(new_item_id().starts_with("item_"));
    assert!(new_response_id().starts_with("resp_"));
    assert!(new_session_id().starts_with("sess_"));
    assert!(new_call_id().starts_with("call_"));
    assert_eq!(ServerEvent::error(RealtimeError::server("x", "y")).event_type(), "error");
}

#[test]
fn audio_format_specs_convert_both_ways() {
    for format in [AudioFormat::REALTIME_PCM, AudioFormat::Pcmu, AudioFormat::Pcma] {
        let spec = AudioFormatSpec::from(format);
        assert_eq!(spec.to_audio_format(), Ok(format));
    }
    assert_eq!(
        serde_json::to_value(AudioFormatSpec::from(AudioFormat::REALTIME_PCM)).unwrap(),
        json!({"type": "audio/pcm", "rate": 24000})
    );
    assert_eq!(serde_json::to_value(AudioFormatSpec::from(AudioFormat::Pcmu)).unwrap(), json!({"type": "audio/pcmu"}));
    let bad = AudioFormatSpec { format_type: "audio/pcm".into(), rate: Some(16000) };
    assert!(bad.to_audio_format().is_err());
}
