//! `tokenizer.json` through the `tokenizers` crate.

use crate::error::{ModelError, Result};
use std::path::{Path, PathBuf};

/// A tokenizer loaded from a model directory.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("path", &self.path).finish_non_exhaustive()
    }
}

/// Token ids and, for each, its `(start, end)` byte range in the encoded text.
pub type IdsWithOffsets = (Vec<i64>, Vec<(usize, usize)>);

impl Tokenizer {
    /// Loads `dir/tokenizer.json`.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] naming the file.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// The tokenizer of a model: `dir/tokenizer.json`, or the tokenizer a `.gguf` file describes.
    ///
    /// # Errors
    /// As [`Tokenizer::from_dir`] or [`Tokenizer::from_gguf`].
    pub fn for_model(path: &Path) -> Result<Self> {
        if crate::gguf::is_gguf(path) {
            Self::from_gguf(path)
        } else {
            Self::from_dir(path)
        }
    }

    /// The tokenizer a GGUF file's metadata describes, built as transformers builds it (see
    /// [`crate::gguf_tokenizer`]).
    ///
    /// # Errors
    /// An unreadable file, or a vocabulary type peft-rs does not build.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let file = peft_gguf::Gguf::open(path)?;
        let json = crate::gguf_tokenizer::tokenizer_json(&file)?;
        let inner: tokenizers::Tokenizer = json.to_string().parse().map_err(|e: tokenizers::Error| {
            ModelError::Tokenizer { path: path.to_path_buf(), message: e.to_string() }
        })?;
        Ok(Self { inner, path: path.to_path_buf() })
    }

    /// Loads a `tokenizer.json` file.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] naming the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::Tokenizer { path: path.to_path_buf(), message: "no such file".into() });
        }
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer { path: path.to_path_buf(), message: e.to_string() })?;
        // Like transformers' fast tokenizers, encode without the padding/truncation a tokenizer.json may
        // carry (sentence-transformers files pad everything to 128): batching pads, callers truncate.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(Self { inner, path: path.to_path_buf() })
    }

    fn err(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Tokenizer { path: self.path.clone(), message: e.to_string() }
    }

    /// Token ids of `text`.
    ///
    /// # Errors
    /// A tokenizer failure.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| self.err(e))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// Token ids of `text` and each token's byte range in `text` (the offsets transformers' fast
    /// tokenizers report, in bytes rather than characters), e.g. to map character spans to tokens.
    ///
    /// # Errors
    /// A tokenizer failure.
    pub fn encode_with_offsets(&self, text: &str, add_special_tokens: bool) -> Result<IdsWithOffsets> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| self.err(e))?;
        Ok((enc.get_ids().iter().map(|&i| i64::from(i)).collect(), enc.get_offsets().to_vec()))
    }

    /// Text of `ids`.
    ///
    /// # Errors
    /// A tokenizer failure (e.g. an id outside the vocabulary).
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> =
            ids.iter().map(|&i| u32::try_from(i).map_err(|e| self.err(e))).collect::<Result<_>>()?;
        self.inner.decode(&ids, skip_special_tokens).map_err(|e| self.err(e))
    }

    /// The id of a token string.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }
}
