// Package archtest holds no code: its test checks the module's import
// direction rules, one table row per rule with the reason for it (see
// imports_test.go). A new rule is a new row.
package archtest
