"""The webhook service (``gate serve``) and its audit log (``gate audit verify``)."""
