//! The agent's turn: the response in progress ([`Active`]): its items (the assistant message and tool
//! calls, with arguments as they stream), the model that serves it and its stage timings; and the
//! chat request a response sends to the gateway ([`chat_request`]).

use std::collections::BTreeMap;

use tokio::time::Instant;

use crate::audio::AudioFormat;
use tokio_util::sync::CancellationToken;

use super::command::ResponseOverrides;
use super::conversation::{new_item_id, Content, Conversation, FunctionCallItem, Item, ItemStatus, MessageItem, Role};
use super::event::{Latencies, MeterReading, ResponseStatus, ResponseSummary};
use super::input::TurnTimes;
use super::settings::{Settings, Tool, ToolChoice};
use crate::llm::types::{
    ChatRequest, FinishReason, FunctionDef, NamedFunction, StreamOptions, Tool as ChatTool, ToolChoice as ChatToolChoice, Usage,
};

/// The response in progress.
pub struct Active {
    pub id: String,
    /// Tells this response's messages from those of one already cancelled.
    pub seq: u64,
    pub cancel: CancellationToken,
    pub audio: bool,
    /// The output format when the response started; its audio is made at this format's rate.
    pub output_format: AudioFormat,
    pub in_conversation: bool,
    metadata: Option<serde_json::Value>,
    /// Output items in order (message and function calls).
    output: Vec<Item>,
    message: Option<MessageState>,
    calls: BTreeMap<u32, CallState>,
    model: Option<String>,
    /// The TTS engine that spoke the last chunk (after any fallback).
    pub tts_engine: Option<String>,
    ttft_ms: Option<f64>,
    tts_ttfb_ms: Option<f64>,
    first_audio_at: Option<Instant>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    failed: Option<(&'static str, String)>,
    /// The response task reported `Done`.
    llm_done: bool,
    /// The user turn it answers.
    turn: Option<TurnTimes>,
}

/// The assistant message of a response.
struct MessageState {
    item_id: String,
    /// Its place in the response's output.
    output_index: usize,
    /// Everything the model wrote.
    text: String,
    /// What has been released as spoken text so far.
    spoken: String,
}

/// A response's items, final, as it ends.
pub struct Finished {
    /// The assistant message, if the model wrote any.
    pub message: Option<Item>,
    /// Its tool calls, in the order the model made them.
    pub calls: Vec<Item>,
}

struct CallState {
    item_id: String,
    output_index: usize,
    call_id: String,
    name: String,
    arguments: String,
}

impl Active {
    pub fn new(
        id: String,
        seq: u64,
        cancel: CancellationToken,
        overrides: &ResponseOverrides,
        audio: bool,
        output_format: AudioFormat,
        turn: Option<TurnTimes>,
    ) -> Active {
        Active {
            id,
            seq,
            cancel,
            audio,
            output_format,
            in_conversation: !overrides.out_of_band,
            metadata: overrides.metadata.clone(),
            output: Vec::new(),
            message: None,
            calls: BTreeMap::new(),
            model: None,
            tts_engine: None,
            ttft_ms: None,
            tts_ttfb_ms: None,
            first_audio_at: None,
            finish: None,
            usage: None,
            failed: None,
            llm_done: false,
            turn,
        }
    }

    /// Opens the assistant message on the response's first text; returns the new item, or `None`
    /// when it is already open.
    pub fn open_message(&mut self) -> Option<Item> {
        if self.message.is_some() {
            return None;
        }
        let item_id = new_item_id();
        let part =
            if self.audio { Content::OutputAudio { transcript: Some(String::new()) } } else { Content::OutputText { text: String::new() } };
        let item = Item::Message(MessageItem {
            id: Some(item_id.clone()),
            status: Some(ItemStatus::InProgress),
            role: Role::Assistant,
            content: vec![part],
        });
        self.message = Some(MessageState { item_id, output_index: self.output.len(), text: String::new(), spoken: String::new() });
        self.output.push(item.clone());
        Some(item)
    }

    /// The model that serves the response, and its time to first token.
    pub fn served_by(&mut self, model: String, ttft_ms: f64) {
        self.model = Some(model);
        self.ttft_ms = Some(ttft_ms);
    }

    /// More of the model's text; the message's item id when the text is shown as written (a
    /// response without audio), `None` when it will be spoken or there is no message.
    pub fn write(&mut self, text: &str) -> Option<String> {
        let m = self.message.as_mut()?;
        m.text.push_str(text);
        (!self.audio).then(|| m.item_id.clone())
    }

    /// The message's item id, once it is open.
    pub fn message_id(&self) -> Option<&str> {
        self.message.as_ref().map(|m| m.item_id.as_str())
    }

    /// A chunk's text started playing.
    pub fn spoke(&mut self, text: &str) {
        if let Some(m) = self.message.as_mut() {
            m.spoken.push_str(text);
        }
    }

    /// Playback of `item_id` was cut: what the caller heard of it is all that was said.
    pub fn heard(&mut self, item_id: &str, text: &str) {
        if let Some(m) = self.message.as_mut().filter(|m| m.item_id == item_id) {
            m.spoken = text.to_string();
        }
    }

    /// The model's usage; returns the model that served, to price it.
    pub fn used(&mut self, usage: Usage) -> Option<&str> {
        self.usage = Some(usage);
        self.model.as_deref()
    }

    pub fn finished(&mut self, reason: FinishReason) {
        self.finish = Some(reason);
    }

    pub fn tts_first_audio(&mut self, ttfb_ms: f64) {
        self.tts_ttfb_ms = Some(ttfb_ms);
    }

    pub fn fail(&mut self, code: &'static str, message: String) {
        self.failed = Some((code, message));
    }

    /// The response task has sent everything.
    pub fn model_done(&mut self) {
        self.llm_done = true;
    }

    pub fn is_model_done(&self) -> bool {
        self.llm_done
    }

    /// Its first audio went out at `now`; the user turn it answers, for the voice-to-voice time.
    pub fn audio_started(&mut self, now: Instant) -> Option<TurnTimes> {
        self.first_audio_at = Some(now);
        self.turn
    }

    /// The model started tool call `index`: its item.
    pub fn start_call(&mut self, index: u32, call_id: String, name: String) -> Item {
        let item_id = new_item_id();
        let item = Item::FunctionCall(FunctionCallItem {
            id: Some(item_id.clone()),
            status: Some(ItemStatus::InProgress),
            call_id: Some(call_id.clone()),
            name: name.clone(),
            arguments: String::new(),
        });
        self.calls.insert(index, CallState { item_id, output_index: self.output.len(), call_id, name, arguments: String::new() });
        self.output.push(item.clone());
        item
    }

    /// More arguments of tool call `index`: its item id and call id, or `None` for a call never started.
    pub fn call_arguments(&mut self, index: u32, arguments: &str) -> Option<(String, String)> {
        let call = self.calls.get_mut(&index)?;
        call.arguments.push_str(arguments);
        Some((call.item_id.clone(), call.call_id.clone()))
    }

    /// How the response ends once the model is done.
    pub fn outcome(&self) -> ResponseStatus {
        if let Some((code, message)) = &self.failed {
            ResponseStatus::Failed { code: code.to_string(), message: message.clone() }
        } else if self.finish == Some(FinishReason::Length) {
            ResponseStatus::Incomplete
        } else {
            ResponseStatus::Completed
        }
    }

    /// Ends the response's items with `status`: each takes its final form in the output.
    pub fn finish_items(&mut self, status: ItemStatus) -> Finished {
        let message = self.final_message(status);
        if let (Some(item), Some(m)) = (&message, self.message.take()) {
            self.output[m.output_index] = item.clone();
        }
        let mut calls = Vec::new();
        for (output_index, item) in self.final_calls(status) {
            self.output[output_index] = item.clone();
            calls.push(item);
        }
        Finished { message, calls }
    }

    /// The summary `response.done` reports.
    pub fn summary(self, status: ResponseStatus, meter: Option<MeterReading>) -> ResponseSummary {
        let latencies = self.latencies();
        ResponseSummary {
            id: self.id,
            status,
            output: self.output,
            audio: self.audio,
            usage: self.usage,
            metadata: self.metadata,
            model: self.model,
            tts_engine: self.tts_engine,
            latencies,
            meter,
        }
    }

    /// The message's final item: what was spoken (audio) or written (text), with `status`.
    fn final_message(&self, status: ItemStatus) -> Option<Item> {
        let m = self.message.as_ref()?;
        let content = if self.audio {
            Content::OutputAudio { transcript: Some(m.spoken.clone()) }
        } else {
            Content::OutputText { text: m.text.clone() }
        };
        Some(Item::Message(MessageItem {
            id: Some(m.item_id.clone()),
            status: Some(status),
            role: Role::Assistant,
            content: vec![content],
        }))
    }

    /// The final items of its tool calls, in the order the model made them, with their place in
    /// the output.
    fn final_calls(&mut self, status: ItemStatus) -> Vec<(usize, Item)> {
        std::mem::take(&mut self.calls)
            .into_values()
            .map(|call| {
                let item = Item::FunctionCall(FunctionCallItem {
                    id: Some(call.item_id),
                    status: Some(status),
                    call_id: Some(call.call_id),
                    name: call.name,
                    arguments: call.arguments,
                });
                (call.output_index, item)
            })
            .collect()
    }

    /// Stage latencies of the response.
    fn latencies(&self) -> Latencies {
        let voice_to_voice = match (self.turn, self.first_audio_at) {
            (Some(turn), Some(first)) => Some(first.duration_since(turn.speech_end).as_secs_f64() * 1000.0),
            _ => None,
        };
        Latencies { stt: self.turn.and_then(|t| t.stt_ms), llm_ttft: self.ttft_ms, tts_ttfb: self.tts_ttfb_ms, voice_to_voice }
    }
}

/// The gateway request for a response: the conversation (or the response's own input items) after
/// the instructions, the tools and the output limit, with the response's overrides applied.
pub fn chat_request(settings: &Settings, overrides: &ResponseOverrides, conversation: &Conversation) -> ChatRequest {
    let instructions = overrides.instructions.clone().or_else(|| settings.instructions.clone());
    let messages = match &overrides.input {
        Some(items) => {
            let mut scratch = Conversation::new(items.len().max(1)).with_max_bytes(conversation.max_bytes());
            for item in items {
                if let Some(id) = item.id().filter(|_| matches!(item, Item::Message(m) if m.content.is_empty())) {
                    // An item reference: a message with an id and no content copies that item.
                    if let Some(e) = conversation.get(id) {
                        if scratch.insert(e.item.clone(), None, e.speaker.clone()).is_ok() {
                            if let Some(copy) = scratch.get_mut(id) {
                                copy.words = e.words.clone();
                            }
                        }
                    }
                } else {
                    let _ = scratch.insert(item.clone(), None, None);
                }
            }
            scratch.to_messages_rendered(instructions.as_deref(), settings.transcript_rendering)
        }
        None => conversation.to_messages_rendered(instructions.as_deref(), settings.transcript_rendering),
    };
    let tools = overrides.tools.as_ref().unwrap_or(&settings.tools);
    let tool_choice = overrides.tool_choice.as_ref().or(settings.tool_choice.as_ref());
    let max = overrides.max_output_tokens.unwrap_or(settings.max_output_tokens);
    ChatRequest {
        model: settings.model.clone(),
        messages,
        stream: true,
        stream_options: Some(StreamOptions { include_usage: true }),
        tools: (!tools.is_empty()).then(|| tools.iter().map(chat_tool).collect()),
        tool_choice: if tools.is_empty() { None } else { tool_choice.map(chat_tool_choice) },
        max_completion_tokens: max,
        ..ChatRequest::default()
    }
}

fn chat_tool(tool: &Tool) -> ChatTool {
    ChatTool {
        kind: "function".into(),
        function: FunctionDef {
            name: tool.name.clone(),
            description: tool.description.clone(),
            parameters: tool.parameters.clone(),
            strict: None,
        },
    }
}

fn chat_tool_choice(choice: &ToolChoice) -> ChatToolChoice {
    match choice {
        ToolChoice::None => ChatToolChoice::Mode("none".into()),
        ToolChoice::Auto => ChatToolChoice::Mode("auto".into()),
        ToolChoice::Required => ChatToolChoice::Mode("required".into()),
        ToolChoice::Function(name) => ChatToolChoice::Named { kind: "function".into(), function: NamedFunction { name: name.clone() } },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::AudioFormat;
    use crate::session::conversation::TranscriptRendering;

    fn settings() -> Settings {
        Settings {
            model: "default".into(),
            instructions: Some("Be brief.".into()),
            audio_out: true,
            input_format: AudioFormat::REALTIME_PCM,
            output_format: AudioFormat::REALTIME_PCM,
            turn: None,
            voice: None,
            tools: vec![Tool { name: "weather".into(), description: None, parameters: None }],
            tool_choice: None,
            max_output_tokens: Some(50),
            transcription: None,
            transcript_rendering: Default::default(),
        }
    }

    fn user(text: &str) -> Item {
        Item::Message(MessageItem { id: None, status: None, role: Role::User, content: vec![Content::InputText { text: text.into() }] })
    }

    #[test]
    fn a_request_takes_the_session_settings_and_the_response_overrides() {
        let mut conversation = Conversation::new(10);
        let (said, _) = conversation.insert(user("book a table"), None, None).unwrap();
        let request = chat_request(&settings(), &ResponseOverrides::default(), &conversation);
        let v = serde_json::to_value(&request).unwrap();
        assert_eq!(v["messages"][0]["content"], "Be brief.");
        assert_eq!(v["messages"][1]["content"], "book a table");
        assert_eq!(v["tools"][0]["function"]["name"], "weather");
        assert_eq!(v["max_completion_tokens"], 50);

        // Out of band, over its own input: a reference to the conversation's item and a new one;
        // no limit, no tools, a named tool choice is dropped with the tools.
        let overrides = ResponseOverrides {
            out_of_band: true,
            input: Some(vec![
                Item::Message(MessageItem { id: said.id().map(str::to_string), status: None, role: Role::User, content: vec![] }),
                user("and a taxi"),
            ]),
            instructions: Some("Answer in French.".into()),
            tools: Some(vec![]),
            tool_choice: Some(ToolChoice::Function("weather".into())),
            max_output_tokens: Some(None),
            ..ResponseOverrides::default()
        };
        let v = serde_json::to_value(chat_request(&settings(), &overrides, &conversation)).unwrap();
        let texts: Vec<&str> = v["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
        assert_eq!(texts, ["Answer in French.", "book a table", "and a taxi"]);
        assert!(v.get("tools").is_none() && v.get("tool_choice").is_none() && v.get("max_completion_tokens").is_none(), "{v}");
    }

    #[test]
    fn the_session_rendering_writes_user_speech_also_in_item_references() {
        let mut conversation = Conversation::new(10);
        let spoken = Item::Message(MessageItem {
            id: None,
            status: None,
            role: Role::User,
            content: vec![Content::InputAudio { transcript: Some("book a table".into()) }],
        });
        let (said, _) = conversation.insert(spoken, None, Some("A".into())).unwrap();
        conversation.get_mut(said.id().unwrap()).unwrap().words = ["book", "a", "table"]
            .iter()
            .zip(0u64..)
            .map(|(w, i)| crate::stt::Word {
                text: w.to_string(),
                start_ms: 1_000 + i * 300,
                end_ms: 1_300 + i * 300,
                confidence: 0.3 * i as f32,
            })
            .collect();
        let detailed = Settings { transcript_rendering: TranscriptRendering::Detailed, ..settings() };
        let expected = "[00:01.0-00:01.9] speaker_A: [book?] [a?] table";
        let v = serde_json::to_value(chat_request(&detailed, &ResponseOverrides::default(), &conversation)).unwrap();
        assert_eq!(v["messages"][1], serde_json::json!({"role": "user", "content": expected}));
        let reference = ResponseOverrides {
            input: Some(vec![Item::Message(MessageItem {
                id: said.id().map(str::to_string),
                status: None,
                role: Role::User,
                content: vec![],
            })]),
            ..ResponseOverrides::default()
        };
        let v = serde_json::to_value(chat_request(&detailed, &reference, &conversation)).unwrap();
        assert_eq!(v["messages"][1]["content"], expected);
        let v = serde_json::to_value(chat_request(&settings(), &reference, &conversation)).unwrap();
        assert_eq!(v["messages"][1], serde_json::json!({"role": "user", "name": "speaker_A", "content": "book a table"}));
    }

    #[test]
    fn tool_calls_collect_their_arguments_and_keep_their_place() {
        let mut active = Active::new(
            "resp_1".into(),
            1,
            CancellationToken::new(),
            &ResponseOverrides::default(),
            false,
            AudioFormat::REALTIME_PCM,
            None,
        );
        assert!(active.open_message().is_some());
        assert!(active.open_message().is_none(), "one message per response");
        active.start_call(0, "call_a".into(), "weather".into());
        assert!(active.call_arguments(0, "{\"city\":").is_some());
        assert!(active.call_arguments(0, "\"Paris\"}").is_some());
        assert!(active.call_arguments(7, "{}").is_none());
        assert_eq!(active.write("Sunny."), active.message_id().map(str::to_string), "text is shown as written");
        assert_eq!(active.outcome(), ResponseStatus::Completed);
        active.finished(FinishReason::Length);
        assert_eq!(active.outcome(), ResponseStatus::Incomplete);
        active.fail("tts_failed", "no voice".into());
        assert_eq!(active.outcome(), ResponseStatus::Failed { code: "tts_failed".into(), message: "no voice".into() });
        let finished = active.finish_items(ItemStatus::Completed);
        assert_eq!(finished.calls.len(), 1);
        let Item::FunctionCall(call) = &finished.calls[0] else { panic!("{:?}", finished.calls) };
        assert_eq!(call.arguments, "{\"city\":\"Paris\"}");
        let Some(Item::Message(m)) = &finished.message else { panic!("no message") };
        assert_eq!(m.content, vec![Content::OutputText { text: "Sunny.".into() }]);
        // The summary lists the items in the order they were made: the message, then the call.
        let summary = active.summary(ResponseStatus::Completed, None);
        assert!(matches!(&summary.output[..], [Item::Message(_), Item::FunctionCall(_)]), "{:?}", summary.output);
    }
}
