//! Hybrid prompts (SPEC 6): templates from the config with the history
//! rendered as `title [HistoryEmb]` items and, for the generative objective,
//! the candidates as `title [CansEmb]`. A placeholder is not a token: its
//! input embedding is the projector's output for that item, so the prompt
//! is a list of [`Tok`]s. Templates and titles are tokenised once; titles
//! are cut to a token budget so one long title cannot blow up a batch.

use anyhow::{ensure, Result};
use rand::seq::SliceRandom;
use rand::Rng;

use distillrec_config::{TeacherConfig, TeacherObjective};
use distillrec_data::{Dataset, ItemId};
use distillrec_llm::{ChatTemplate, Tokenizer};

/// One input position of a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tok {
    /// A vocabulary token.
    Id(u32),
    /// A history item's placeholder (`[HistoryEmb]`): its input embedding
    /// is `projector(e_item)`.
    Item(ItemId),
    /// A candidate's placeholder (`[CansEmb]`): `projector(e_item)`, plus
    /// the candidate cue when the teacher has one.
    Cand(ItemId),
    /// A vocabulary token of a candidate's title: its token embedding,
    /// plus the candidate cue when the teacher has one, so the whole
    /// rendered candidate carries the student's score.
    CandText(u32, ItemId),
}

impl Tok {
    /// The item of a placeholder (history or candidate).
    pub fn item(self) -> Option<ItemId> {
        match self {
            Tok::Id(_) | Tok::CandText(..) => None,
            Tok::Item(it) | Tok::Cand(it) => Some(it),
        }
    }
}

/// A rendered prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    /// The input positions.
    pub input: Vec<Tok>,
    /// Answer tokens (generative: the target's title and the end token),
    /// trained with the causal-LM loss after `input`; empty for ranking.
    pub answer: Vec<u32>,
    /// The candidates shown (generative), in prompt order.
    pub candidates: Vec<ItemId>,
}

enum Part {
    Text(Vec<u32>),
    History,
    Candidates,
}

/// A template split at its placeholders, each text part tokenised.
struct Template(Vec<Part>);

impl Template {
    fn new(tok: &Tokenizer, chat: Option<&ChatTemplate>, text: &str) -> Result<Template> {
        let full = match chat {
            Some(c) => c.render(text),
            None => text.to_string(),
        };
        let mut parts = Vec::new();
        let mut rest = full.as_str();
        let mut first = true;
        loop {
            let next = ["{history}", "{candidates}"]
                .iter()
                .filter_map(|m| rest.find(m).map(|i| (i, *m)))
                .min();
            let (head, marker) = match next {
                Some((i, m)) => (&rest[..i], Some(m)),
                None => (rest, None),
            };
            if !head.is_empty() {
                let add_special = first && !chat.is_some_and(ChatTemplate::includes_bos);
                parts.push(Part::Text(tok.encode(head, add_special)?));
            }
            first = false;
            match marker {
                Some("{history}") => parts.push(Part::History),
                Some(_) => parts.push(Part::Candidates),
                None => break,
            }
            rest = &rest[head.len() + marker.map_or(0, str::len)..];
        }
        Ok(Template(parts))
    }
}

/// Renders rows of one dataset into prompts.
pub struct Prompter {
    titles: Vec<Vec<u32>>,
    sep: Vec<u32>,
    end: u32,
    generative: Vec<Template>,
    ranking: Vec<Template>,
    max_history: usize,
    /// Candidates of a generative prompt.
    pub candidates: usize,
    num_items: usize,
}

impl Prompter {
    /// Tokenises the templates of `cfg` (wrapped in `chat` when
    /// `cfg.chat`) and every title of `ds`, cut to `cfg.max_title_tokens`.
    pub fn new(
        tok: &Tokenizer,
        chat: &ChatTemplate,
        ds: &Dataset,
        cfg: &TeacherConfig,
    ) -> Result<Prompter> {
        let chat = cfg.chat.then_some(chat);
        let mut titles = vec![Vec::new()];
        for (i, it) in ds.items.iter().enumerate() {
            let title = if it.title.trim().is_empty() {
                &it.raw_id
            } else {
                &it.title
            };
            let mut ids = tok.encode(title.trim(), false)?;
            ensure!(
                !ids.is_empty(),
                "item {} (`{}`) has a title without tokens",
                i + 1,
                it.raw_id
            );
            ids.truncate(cfg.max_title_tokens);
            titles.push(ids);
        }
        let end = match chat.and_then(|c| c.stop_strings().into_iter().next()) {
            Some(stop) => match tok.encode(&stop, false)?.as_slice() {
                [id] => *id,
                _ => anyhow::bail!("the chat template's end `{stop}` is not one token"),
            },
            None => *tok
                .eos_ids()
                .first()
                .ok_or_else(|| anyhow::anyhow!("the tokenizer has no end-of-sequence token"))?,
        };
        let templates = |list: &[String]| -> Result<Vec<Template>> {
            list.iter().map(|t| Template::new(tok, chat, t)).collect()
        };
        Ok(Prompter {
            titles,
            sep: tok.encode(", ", false)?,
            end,
            generative: templates(&cfg.prompts)?,
            ranking: templates(&cfg.ranking_prompts)?,
            max_history: cfg.max_history,
            candidates: cfg.candidates,
            num_items: ds.num_items(),
        })
    }

    /// The tokens the rendered history of `history` takes (its titles,
    /// separators and placeholders): what makes prompts long or short.
    pub fn history_len(&self, history: &[ItemId]) -> usize {
        let h = &history[history.len().saturating_sub(self.max_history)..];
        h.iter()
            .map(|&i| self.titles[i as usize].len() + 1)
            .sum::<usize>()
            + h.len().saturating_sub(1) * self.sep.len()
    }

    /// An upper bound of the input and answer tokens of a prompt for
    /// `history` under `objective` (the longest template; for generative
    /// prompts every candidate and the answer counted at the longest title):
    /// what `teacher plan` sizes activations and epochs by.
    pub fn length_bound(&self, history: &[ItemId], objective: TeacherObjective) -> usize {
        let text = |ts: &[Template]| {
            ts.iter()
                .map(|t| {
                    t.0.iter()
                        .map(|p| match p {
                            Part::Text(ids) => ids.len(),
                            _ => 0,
                        })
                        .sum::<usize>()
                })
                .max()
                .unwrap_or(0)
        };
        let history = self.history_len(history);
        let longest_title = self.titles.iter().map(Vec::len).max().unwrap_or(0);
        let cands = self.candidates;
        let generative = text(&self.generative)
            + history
            + cands * (longest_title + 1)
            + cands.saturating_sub(1) * self.sep.len()
            + longest_title
            + 1;
        let ranking = text(&self.ranking) + history;
        match objective {
            TeacherObjective::Ranking => ranking,
            TeacherObjective::Generative => generative,
            TeacherObjective::Both => ranking.max(generative),
        }
    }

    /// The title tokens of `item` (cut to the budget).
    pub fn title(&self, item: ItemId) -> &[u32] {
        &self.titles[item as usize]
    }

    /// Renders `items` as `title [placeholder]` (`title` alone when not
    /// `hybrid`), separated; candidates' title tokens are marked as theirs.
    fn items(&self, out: &mut Vec<Tok>, items: &[ItemId], hybrid: bool, candidates: bool) {
        for (i, &it) in items.iter().enumerate() {
            if i > 0 {
                out.extend(self.sep.iter().map(|&t| Tok::Id(t)));
            }
            let title = self.titles[it as usize].iter();
            if candidates {
                out.extend(title.map(|&t| Tok::CandText(t, it)));
            } else {
                out.extend(title.map(|&t| Tok::Id(t)));
            }
            if hybrid {
                out.push(if candidates {
                    Tok::Cand(it)
                } else {
                    Tok::Item(it)
                });
            }
        }
    }

    fn render(&self, t: &Template, history: &[ItemId], cands: &[ItemId], hybrid: bool) -> Vec<Tok> {
        let start = history.len().saturating_sub(self.max_history);
        let mut out = Vec::new();
        for p in &t.0 {
            match p {
                Part::Text(ids) => out.extend(ids.iter().map(|&t| Tok::Id(t))),
                Part::History => self.items(&mut out, &history[start..], hybrid, false),
                Part::Candidates => self.items(&mut out, cands, hybrid, true),
            }
        }
        out
    }

    /// The history-only prompt of the ranking objective (template drawn
    /// from `rng`).
    pub fn ranking(&self, history: &[ItemId], hybrid: bool, rng: &mut impl Rng) -> Prompt {
        let t = &self.ranking[rng.gen_range(0..self.ranking.len())];
        Prompt {
            input: self.render(t, history, &[], hybrid),
            answer: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// The generative prompt: history, the given candidates, and the
    /// target's title as the answer (template drawn from `rng`).
    pub fn generative(
        &self,
        history: &[ItemId],
        candidates: &[ItemId],
        target: ItemId,
        hybrid: bool,
        rng: &mut impl Rng,
    ) -> Prompt {
        let t = &self.generative[rng.gen_range(0..self.generative.len())];
        let mut answer = self.titles[target as usize].clone();
        answer.push(self.end);
        Prompt {
            input: self.render(t, history, candidates, hybrid),
            answer,
            candidates: candidates.to_vec(),
        }
    }

    /// The target plus `candidates − 1` distinct items outside the history
    /// and the target, shuffled (fewer when the catalogue is too small).
    /// The target is never in the history's place and always among them.
    pub fn draw_candidates(
        &self,
        history: &[ItemId],
        target: ItemId,
        rng: &mut impl Rng,
    ) -> Vec<ItemId> {
        let mut out = vec![target];
        let banned = |it: ItemId, out: &[ItemId]| history.contains(&it) || out.contains(&it);
        let eligible = (1..=self.num_items as ItemId)
            .filter(|&i| !banned(i, &[target]))
            .count();
        let want = (self.candidates - 1).min(eligible);
        while out.len() < want + 1 {
            let it = rng.gen_range(1..=self.num_items as ItemId);
            if !banned(it, &out) {
                out.push(it);
            }
        }
        out.shuffle(rng);
        out
    }
}
