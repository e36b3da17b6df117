"""The one base class of every error a user can fix (bad config, input, tokenizer, shards).

Commands catch ``UserError`` at the top and print its message without a traceback; anything
else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input or configuration; the message names the file, row or key and the fix."""
