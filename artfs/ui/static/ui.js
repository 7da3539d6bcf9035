// The page works without this file; it only submits a chooser as soon as its choice changes.
document.addEventListener("change", (event) => {
  if (event.target.classList.contains("autosubmit")) {
    event.target.form.submit();
  }
});
