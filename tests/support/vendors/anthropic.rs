//! Fake anthropic API: being written.
