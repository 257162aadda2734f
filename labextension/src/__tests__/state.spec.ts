/**
 * Unit tests of the state logic (node --test, compiled with tsconfig.test.json):
 * `jlpm test` in labextension/, also run by tests/jupyter/test_labextension.py.
 */
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';

import {
  collaboratorsOf,
  computeStatus,
  errorMessage,
  formatTime,
  meshStateOf,
  shareCandidates
} from '../state';
import type { IAwarenessState, IMeshRoomState } from '../tokens';

function mesh(fields: Partial<IMeshRoomState> = {}): IMeshRoomState {
  return {
    lock: 'held',
    holder: '',
    editable: true,
    checkpoint: null,
    site: 'site-a',
    primary: 'site-a',
    link: '',
    offline: false,
    ...fields
  };
}

describe('computeStatus', () => {
  it('is connecting before the node spoke', () => {
    assert.equal(computeStatus({ mesh: null, seen: false, role: null }).kind, 'connecting');
  });

  it('is live with the time of the last checkpoint', () => {
    const at = new Date(2026, 10, 21, 14, 3, 12).getTime() / 1000;
    const s = computeStatus({ mesh: mesh({ checkpoint: at }), seen: true, role: 'editor' });
    assert.equal(s.kind, 'live');
    assert.equal(s.checkpoint, at);
    assert.match(s.label, /14:03:12/);
  });

  it('is live through the home site when linked', () => {
    const s = computeStatus({
      mesh: mesh({ lock: 'remote', site: 'site-b', primary: 'site-a', link: 'online' }),
      seen: true,
      role: 'editor'
    });
    assert.equal(s.kind, 'live');
    assert.match(s.label, /via site-a/);
  });

  it('is offline, changes held, when the link to the home site is down', () => {
    const s = computeStatus({
      mesh: mesh({ lock: 'remote', site: 'site-b', primary: 'site-a', link: 'offline', offline: true }),
      seen: true,
      role: 'editor'
    });
    assert.equal(s.kind, 'offline');
    assert.match(s.label, /site-a/);
    assert.match(s.label, /will merge/);
  });

  it('is offline, not live via the primary, when the link to this site\'s primary node is down', () => {
    const s = computeStatus({
      mesh: mesh({ lock: 'linked', holder: 'node-2', primary: 'node-2', link: 'offline', offline: true }),
      seen: true,
      role: 'editor'
    });
    assert.equal(s.kind, 'offline');
    assert.match(s.label, /node-2/);
    assert.doesNotMatch(s.label, /Live/);
  });

  it('is offline when the browser lost its node after seeing it', () => {
    const s = computeStatus({ mesh: null, seen: true, role: 'editor' });
    assert.equal(s.kind, 'offline');
    assert.match(s.label, /will merge/);
  });

  it('is offline when the browser has no network, before the websocket notices', () => {
    const s = computeStatus({ mesh: mesh(), seen: true, role: 'editor', online: false });
    assert.equal(s.kind, 'offline');
    assert.equal(computeStatus({ mesh: mesh(), seen: true, role: 'editor', online: true }).kind, 'live');
  });

  it('offline wins over read-only, read-only over a foreign lock', () => {
    assert.equal(
      computeStatus({ mesh: mesh({ offline: true }), seen: true, role: 'viewer' }).kind,
      'offline'
    );
    assert.equal(
      computeStatus({ mesh: mesh({ lock: 'other', holder: 'wopi' }), seen: true, role: 'viewer' })
        .kind,
      'readonly'
    );
  });

  it('names the application that holds the lock', () => {
    const s = computeStatus({
      mesh: mesh({ lock: 'other', holder: 'Collabora', editable: false }),
      seen: true,
      role: 'editor'
    });
    assert.equal(s.kind, 'locked');
    assert.match(s.label, /Collabora/);
  });

  it('reports a lost lock, never as live or saved', () => {
    const s = computeStatus({
      mesh: mesh({ lock: 'lost', editable: false, checkpoint: 1_700_000_000 }),
      seen: true,
      role: 'editor'
    });
    assert.equal(s.kind, 'lost');
    assert.match(s.label, /Lock lost/);
    assert.doesNotMatch(s.label, /Live|saved/);
  });

  it('reports unreachable storage as changes held, never as live or saved', () => {
    const at = new Date(2026, 10, 21, 9, 30, 0).getTime() / 1000;
    const s = computeStatus({
      mesh: mesh({ lock: 'unreachable', checkpoint: at }),
      seen: true,
      role: 'editor'
    });
    assert.equal(s.kind, 'unreachable');
    assert.match(s.label, /Storage unreachable/);
    assert.match(s.label, /changes held/);
    assert.doesNotMatch(s.label, /Live|saved/);
    assert.equal(s.checkpoint, at);
    assert.match(s.detail, /09:30:00/);
  });

  it('shows a viewer read-only even while storage is unreachable', () => {
    assert.equal(
      computeStatus({ mesh: mesh({ lock: 'unreachable' }), seen: true, role: 'viewer' }).kind,
      'readonly'
    );
  });
});

describe('collaboratorsOf', () => {
  const states: [number, IAwarenessState][] = [
    [1, { mesh: mesh() }],
    [2, { user: { username: 'einstein', name: 'Albert Einstein', site: 'site-a', role: 'editor' } }],
    [3, { user: { username: 'marie', name: 'Marie Curie', site: 'site-b', role: 'viewer' } }],
    [4, { user: { username: 'marie', name: 'Marie Curie', site: 'site-b', role: 'editor' } }],
    [5, { user: { username: 'me', name: 'Richard Feynman', site: 'site-a' } }]
  ];

  it('leaves out the node, merges tabs of one user, puts the local user first', () => {
    const rows = collaboratorsOf(states, 5, 'viewer');
    assert.deepEqual(
      rows.map(r => [r.name, r.site, r.role, r.me]),
      [
        ['Richard Feynman', 'site-a', 'viewer', true],
        ['Albert Einstein', 'site-a', 'editor', false],
        ['Marie Curie', 'site-b', 'editor', false]
      ]
    );
  });

  it('finds the node state', () => {
    assert.equal(meshStateOf(states)?.site, 'site-a');
    assert.equal(meshStateOf(states.slice(1)), null);
  });
});

describe('shareCandidates', () => {
  const sites = [
    { name: 'site-a', domain: 'a.example', local: true },
    { name: 'site-b', domain: 'b.example', local: false },
    { name: 'site-c', domain: 'c.example', local: false }
  ];
  const found = [{ username: 'marie', display_name: 'Marie Curie', mail: '', site: 'site-a' }];

  it('offers local users, then the name at each other site over OCM', () => {
    assert.deepEqual(
      shareCandidates('marie', found, sites).map(c => [c.grantee, c.ocm]),
      [
        ['marie', false],
        ['marie@site-b', true],
        ['marie@site-c', true]
      ]
    );
  });

  it('narrows to the site after @', () => {
    assert.deepEqual(
      shareCandidates('marie@site-c', [], sites).map(c => c.grantee),
      ['marie@site-c']
    );
  });

  it('offers nothing remote for text with spaces', () => {
    assert.deepEqual(shareCandidates('Marie Curie', [], sites), []);
  });
});

describe('errorMessage', () => {
  it('prefers the server message', () => {
    assert.equal(
      errorMessage(404, { message: "no user 'bob' at site-a", reason: null }, 'Not Found'),
      "no user 'bob' at site-a (HTTP 404)"
    );
  });

  it('falls back to the reason, a text body, then the status text', () => {
    assert.equal(errorMessage(500, { reason: 'Internal' }, 'x'), 'Internal (HTTP 500)');
    assert.equal(errorMessage(502, 'Bad gateway\n', 'x'), 'Bad gateway (HTTP 502)');
    assert.equal(errorMessage(0, null, 'Cannot reach'), 'Cannot reach');
  });
});

describe('formatTime', () => {
  it('pads to hh:mm:ss', () => {
    assert.equal(formatTime(new Date(2026, 0, 2, 3, 4, 5).getTime() / 1000), '03:04:05');
  });
});
