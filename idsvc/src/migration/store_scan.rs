//! The live store's users in id order, read page by page (keyset pagination:
//! `id > last ORDER BY id LIMIT page`), so a scan of any size holds at most
//! `DEPTH + 1` pages. A reader task fetches the next pages while the caller
//! works on the current one.

use crate::domain::UserRow;
use crate::store::SqlStore;
use sqlx::Row;
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// Pages fetched ahead of the consumer.
const DEPTH: usize = 2;

pub struct StoreScan {
    pages: mpsc::Receiver<anyhow::Result<Vec<UserRow>>>,
    current: VecDeque<UserRow>,
    finished: bool,
}

impl StoreScan {
    /// Starts reading `users` in pages of `page` rows.
    pub fn start(store: &SqlStore, page: usize) -> Self {
        let pool = store.pool().clone();
        let page = i64::try_from(page.max(1)).unwrap_or(1000);
        let (tx, rx) = mpsc::channel(DEPTH);
        tokio::spawn(async move {
            let mut last = i64::MIN;
            loop {
                let rows = sqlx::query(
                    "SELECT id, email_sealed, email_index, phone_sealed, password_hash, version, \
                     created_at, updated_at FROM users WHERE id > ? ORDER BY id LIMIT ?",
                )
                .bind(last)
                .bind(page)
                .fetch_all(&pool)
                .await;
                let rows: anyhow::Result<Vec<UserRow>> = rows
                    .map_err(anyhow::Error::from)
                    .and_then(|rows| rows.iter().map(user_row).collect());
                let done = match &rows {
                    Ok(rows) => {
                        if let Some(row) = rows.last() {
                            last = row.id;
                        }
                        (rows.len() as i64) < page
                    }
                    Err(_) => true,
                };
                if tx.send(rows).await.is_err() || done {
                    return;
                }
            }
        });
        Self {
            pages: rx,
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

fn user_row(row: &sqlx::any::AnyRow) -> anyhow::Result<UserRow> {
    Ok(UserRow {
        id: row.try_get(0)?,
        email_sealed: row.try_get(1)?,
        email_index: row.try_get(2)?,
        phone_sealed: row.try_get(3)?,
        password_hash: row.try_get(4)?,
        version: row.try_get(5)?,
        created_at: row.try_get(6)?,
        updated_at: row.try_get(7)?,
    })
}
