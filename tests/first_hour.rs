//! The first hour of a new user (issue 15 §4): each failure a new user met,
//! reproduced with the real `moat` binary.
