//! The live store's users in id order, read page by page (keyset pagination
//! in [`MigrationStore::user_pages`]), so a scan of any size holds at most
//! `DEPTH + 1` pages. The store's reader task fetches the next pages while
//! the caller works on the current one.

use super::store::{MigrationStore, UserPages};
use crate::domain::UserRow;
use std::collections::VecDeque;

/// Pages fetched ahead of the consumer.
const DEPTH: usize = 2;

pub struct StoreScan {
    pages: UserPages,
    current: VecDeque<UserRow>,
    finished: bool,
}

impl StoreScan {
    /// Starts reading `users` in pages of `page` rows.
    pub fn start(store: &dyn MigrationStore, page: usize) -> Self {
        Self {
            pages: store.user_pages(page, DEPTH),
            current: VecDeque::new(),
            finished: false,
        }
    }

    /// The next row's id without consuming it; `None` at the end.
    pub async fn peek_id(&mut self) -> anyhow::Result<Option<i64>> {
        self.fill().await?;
        Ok(self.current.front().map(|r| r.id))
    }

    /// The next row; `None` at the end.
    pub async fn next(&mut self) -> anyhow::Result<Option<UserRow>> {
        self.fill().await?;
        Ok(self.current.pop_front())
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        while self.current.is_empty() && !self.finished {
            match self.pages.recv().await {
                Some(page) => self.current = page?.into(),
                None => self.finished = true,
            }
        }
        Ok(())
    }
}
