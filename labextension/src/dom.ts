/** Small DOM helpers for the plain (non-React) widgets of this extension. */

/** Create an element with attributes and children (strings become text nodes). */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | boolean | undefined> = {},
  ...children: (Node | string | null | undefined | false)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) {
      continue;
    }
    if (name === 'class') {
      el.className = String(value);
    } else {
      el.setAttribute(name, value === true ? '' : value);
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    el.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return el;
}

/** A button that runs an async action, disabled while it runs. */
export function actionButton(
  label: string,
  cls: string,
  action: () => Promise<void>,
  title = ''
): HTMLButtonElement {
  const button = h('button', { class: `jp-mesh-button ${cls}`, type: 'button', title }, label);
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      await action();
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

/**
 * An area that shows one readable error (or nothing). Errors are never swallowed: every
 * failed call of a panel lands here, with the server's message.
 */
export class ErrorArea {
  readonly node = h('div', { class: 'jp-mesh-error', role: 'alert', hidden: true });

  show(error: unknown): void {
    const message =
      error instanceof Error ? error.message : String(error ?? 'Unknown error');
    this.node.textContent = message;
    this.node.hidden = false;
  }

  clear(): void {
    this.node.textContent = '';
    this.node.hidden = true;
  }
}

/**
 * A list row: a text block (a title line and a detail line) on the left and actions on
 * the right.
 */
export function listRow(
  attrs: Record<string, string | boolean | undefined>,
  lead: Node | null,
  title: (Node | string | null | false)[],
  detail: (Node | string | null | false)[],
  actions: (Node | null | false)[] = []
): HTMLLIElement {
  return h(
    'li',
    attrs,
    lead,
    h(
      'div',
      { class: 'jp-mesh-row-text' },
      h('div', { class: 'jp-mesh-row-title' }, ...title),
      h('div', { class: 'jp-mesh-row-detail' }, ...detail)
    ),
    h('div', { class: 'jp-mesh-row-actions' }, ...actions)
  );
}
