"""Small shared helpers with no model or training knowledge: errors, image files, folders."""
