"""The model zoo: each file one ready model/guide pair, written as a user writes their own."""
