//! Unit tests of the alerts role's handler on in-memory records: no broker needed.

use super::*;
