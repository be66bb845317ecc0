"""The official openai SDK's realtime client against voxgate's /v1/realtime.

Usage: realtime_check.py BASE_URL API_KEY FIXTURE_WAV [--route ROUTE] [--offline]
Speaks the fixture (16 kHz WAV, resampled to the Realtime API's 24 kHz PCM) into a session on the
route `voice` (or ROUTE) and checks the transcript, the spoken answer and response.done. By default
the server runs the scripted fakes of tests/sdk/voxgate.toml, whose echo model answers "You said:
<transcript>". With --offline it runs the embedded engines (Whisper, SmolLM2, Piper): the transcript
must hold the fixture's key words and the answer may be anything the model says, spoken.
Prints "realtime SDK checks passed" when every check holds; raises otherwise.
"""

import asyncio
import base64
import struct
import sys
import wave

from openai import AsyncOpenAI

# The whole check's limit (the offline engines on a loaded 2-core machine take well under it).
TIMEOUT_S = 300
# The events of the session so far, for the message when the limit is reached.
SEEN = []


def pcm24_from_wav(path):
    with wave.open(path, "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2, "fixture must be mono PCM16"
        rate = w.getframerate()
        frames = w.readframes(w.getnframes())
    samples = struct.unpack("<%dh" % (len(frames) // 2), frames)
    # Linear interpolation to 24 kHz: enough for a scripted STT.
    n_out = len(samples) * 24000 // rate
    out = []
    for i in range(n_out):
        pos = i * rate / 24000
        j = int(pos)
        frac = pos - j
        a = samples[min(j, len(samples) - 1)]
        b = samples[min(j + 1, len(samples) - 1)]
        out.append(int(a + (b - a) * frac))
    return struct.pack("<%dh" % len(out), *out)


async def main(base_url, api_key, fixture, route, offline):
    client = AsyncOpenAI(base_url=base_url, api_key=api_key)
    audio = pcm24_from_wav(fixture) + b"\x00\x00" * 24000  # one second of silence ends the turn
    async with client.realtime.connect(model=route) as conn:
        created = await conn.recv()
        assert created.type == "session.created", created.type
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "You take restaurant bookings.",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    },
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}},
                },
            }
        )
        chunk = 4800  # 100 ms of 24 kHz PCM16
        for i in range(0, len(audio), chunk):
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio[i : i + chunk]).decode())

        seen, transcript, spoken, audio_bytes, done = [], None, "", 0, None
        SEEN[:] = [seen]
        async for event in conn:
            seen.append(event.type)
            if event.type == "error":
                raise AssertionError(f"server error: {event.error}")
            if event.type == "conversation.item.input_audio_transcription.failed":
                raise AssertionError(f"transcription failed: {event.error}")
            if event.type == "conversation.item.input_audio_transcription.completed":
                transcript = event.transcript
            elif event.type == "response.output_audio_transcript.delta":
                spoken += event.delta
            elif event.type == "response.output_audio.delta":
                audio_bytes += len(base64.b64decode(event.delta))
            elif event.type == "response.done":
                done = event.response
                break

    assert "session.updated" in seen, seen
    assert "input_audio_buffer.speech_started" in seen and "input_audio_buffer.speech_stopped" in seen, seen
    if offline:
        # Whisper tiny.en hears the booking fixture well enough for its key words.
        assert transcript and "table" in transcript.lower(), transcript
        assert spoken.strip(), "the agent said nothing"
    else:
        assert transcript and "book a table" in transcript, transcript
        assert spoken == f"You said: {transcript}", spoken
    assert audio_bytes > 24000, audio_bytes  # at least half a second of 24 kHz PCM16
    assert done is not None and done.status == "completed", done
    assert done.output and done.output[0].type == "message", done.output
    assert done.usage is not None and done.usage.output_tokens > 0, done.usage
    print("realtime SDK checks passed:", len(seen), "events,", audio_bytes, "bytes of audio")
    print("heard:", repr(transcript), "answered:", repr(spoken[:200]))


if __name__ == "__main__":
    args = sys.argv[1:]
    offline = "--offline" in args
    args = [a for a in args if a != "--offline"]
    route = "voice"
    if "--route" in args:
        i = args.index("--route")
        route = args[i + 1]
        del args[i : i + 2]
    if len(args) != 3:
        sys.exit(__doc__)
    try:
        # A server that never answers fails the check instead of hanging it.
        asyncio.run(asyncio.wait_for(main(args[0], args[1], args[2], route, offline), TIMEOUT_S))
    except asyncio.TimeoutError:
        sys.exit(f"no response.done within {TIMEOUT_S} s; events seen: {SEEN[0] if SEEN else []}")
