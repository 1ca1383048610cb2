/* palaver: the sign-in page's greeting. "Welcome back" is for someone who
 * has used the chat in this browser before (the chat page leaves a mark,
 * `markSignedIn`); everyone else, and a browser without JavaScript, reads
 * "Welcome".
 */

const MARK = "palaver.signed-in-here";

/** The chat page was open in this browser: the next sign-in is a return. */
export function markSignedIn() {
  try {
    localStorage.setItem(MARK, "1");
  } catch (e) {
    /* storage refused: the greeting stays "Welcome" */
  }
}

function signedInBefore() {
  try {
    return localStorage.getItem(MARK) === "1";
  } catch (e) {
    return false;
  }
}

const welcome = document.getElementById("welcome");
if (welcome && signedInBefore()) welcome.textContent = "Welcome back. Pick up the conversation where you left it.";
