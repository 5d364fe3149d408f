//! Chat templates: how one user message is rendered into a prompt, and the
//! strings that end the assistant's turn.

use crate::tokenizer::Tokenizer;

/// How a single user message is rendered into a prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatTemplate {
    /// ChatML (`<|im_start|>role\n...<|im_end|>\n`), as used by SmolLM2 and
    /// Qwen2, with the template's default system message if it has one.
    ChatMl {
        /// System message inserted when the conversation has none.
        default_system: Option<String>,
    },
    /// Llama 3 headers (`<|start_header_id|>user<|end_header_id|>\n\n...<|eot_id|>`).
    Llama3,
    /// No template: the prompt is used as is.
    Plain,
}

impl ChatTemplate {
    /// Recognises the template from its Jinja source (GGUF
    /// `tokenizer.chat_template` or `tokenizer_config.json`) or, failing
    /// that, from the tokenizer's special tokens.
    pub fn detect(jinja: Option<&str>, tok: &Tokenizer) -> ChatTemplate {
        let src = jinja.unwrap_or("");
        if src.contains("<|im_start|>")
            || (jinja.is_none() && tok.token_to_id("<|im_start|>").is_some())
        {
            let marker = "<|im_start|>system\n";
            let default_system = if src.contains("!= 'system'") || src.contains("!= \"system\"") {
                src.find(marker).and_then(|i| {
                    let rest = &src[i + marker.len()..];
                    rest.find("<|im_end|>").map(|j| rest[..j].to_string())
                })
            } else {
                None
            };
            ChatTemplate::ChatMl { default_system }
        } else if src.contains("<|start_header_id|>") {
            ChatTemplate::Llama3
        } else {
            ChatTemplate::Plain
        }
    }

    /// The prompt for one user message, ending where the assistant's answer starts.
    pub fn render(&self, user: &str) -> String {
        match self {
            ChatTemplate::ChatMl { default_system } => {
                let mut s = String::new();
                if let Some(sys) = default_system {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                s.push_str(&format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"));
                s
            }
            ChatTemplate::Llama3 => format!(
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
            ChatTemplate::Plain => user.to_string(),
        }
    }

    /// Whether the rendered prompt already contains the BOS marker.
    pub fn includes_bos(&self) -> bool {
        matches!(self, ChatTemplate::Llama3)
    }

    /// Strings that end the assistant's turn.
    pub fn stop_strings(&self) -> Vec<String> {
        match self {
            ChatTemplate::ChatMl { .. } => vec!["<|im_end|>".into()],
            ChatTemplate::Llama3 => vec!["<|eot_id|>".into()],
            ChatTemplate::Plain => Vec::new(),
        }
    }
}
