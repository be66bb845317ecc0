//! Fake gemini API: being written.
