//! Unit tests of the trainer role's handler on in-memory records: no broker needed.

use super::*;
