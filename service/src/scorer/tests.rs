//! Unit tests of the scorer role's handler on in-memory records: no broker needed.

use super::*;
